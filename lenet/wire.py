"""What travels between the demo's page and its server: arrays packed for JSON, and the checked fields of a request.

Arrays go as {"shape", "dtype", "data"}: the little-endian bytes of the array in base64. They arrive exactly as
lenet computed them (a float32 is a float32, not a rounded decimal), cost a few microseconds to pack instead of
milliseconds of JSON numbers, and the page reads them as a typed array without parsing. `unpack` is the inverse,
for tests and other Python clients.

Every request field is checked here before anything computes with it: type, range and size; a misfit is one
LenetError line, which the server answers with 400.
"""

import base64
import binascii
import json
import math
import re

import numpy as np

from .errors import LenetError, short

PACKED_DTYPES = {"float32": "<f4", "float64": "<f8", "int32": "<i4"}
SIZE = 28
NUM_PIXELS = SIZE * SIZE
SESSION = re.compile(r"[A-Za-z0-9_-]{8,64}")


def pack(array):
    """A NumPy array -> {"shape", "dtype", "data": base64 of its little-endian bytes}."""
    a = np.asarray(array)
    name = "int32" if a.dtype.kind in "iub" else str(a.dtype) if a.dtype.kind == "f" else None
    if name not in PACKED_DTYPES:
        raise TypeError(f"cannot pack an array of {a.dtype}")
    data = np.ascontiguousarray(a, dtype=PACKED_DTYPES[name]).tobytes()
    return {"shape": list(a.shape), "dtype": name, "data": base64.b64encode(data).decode("ascii")}


def unpack(packed):
    """The inverse of pack: a NumPy array of the packed dtype and shape."""
    data = base64.b64decode(packed["data"])
    return np.frombuffer(data, dtype=PACKED_DTYPES[packed["dtype"]]).reshape(packed["shape"]).astype(packed["dtype"])


def scale(array):
    """The limit of a colour scale symmetric about zero: the largest |value| (1 for an all-zero array)."""
    m = float(np.abs(array).max()) if np.size(array) else 0.0
    return m if m > 0 and math.isfinite(m) else 1.0


def value_range(array):
    """[min, max] of an array, for a colour scale that runs from one to the other."""
    return [float(np.min(array)), float(np.max(array))]


# -- requests ---------------------------------------------------------------------------------------------------


def check_object(request, allowed, what):
    """A JSON object whose keys are all among `allowed` (a misspelt field is named, not ignored)."""
    if not isinstance(request, dict):
        raise LenetError(f"the request must be a JSON object ({what}), not a JSON {type(request).__name__}")
    unknown = [k for k in request if k not in allowed]
    if unknown:
        raise LenetError(f"unknown field {short(unknown[0], 40)}; the fields are {', '.join(sorted(allowed))}")
    return request


def int_field(request, name, low, high, default=None):
    """A whole number in [low, high]; absent or null gives `default`."""
    value = request.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LenetError(f"'{name}' must be a whole number from {low} to {high}, not {short(value, 40)}")
    return value


def number_field(request, name, low, high):
    """A finite number with low < value <= high (required)."""
    value = request.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise LenetError(f"'{name}' must be a number above {low} and at most {high}, not {short(value, 40)}")
    return float(value)


def bool_field(request, name, default):
    """true or false; absent or null gives `default`."""
    value = request.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise LenetError(f"'{name}' must be true or false, not {short(value, 40)}")
    return value


def choice_field(request, name, choices):
    value = request.get(name)
    if value not in choices:
        raise LenetError(f"'{name}' must be one of {', '.join(choices)}, not {short(value, 40)}")
    return value


def session_field(request, name="session"):
    """A page session's token (as the server made it), or None."""
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not SESSION.fullmatch(value):
        raise LenetError(
            f"'{name}' must be a token the server gave (8-64 letters, digits, - or _), not {short(value, 40)}"
        )
    return value


def query_int(query, name, low, high, default=None):
    """A whole number from a URL's query (parse_qs's dict of lists); the last value counts."""
    values = query.get(name)
    if not values:
        return default
    text = values[-1]
    if not re.fullmatch(r"-?[0-9]{1,9}", text):
        raise LenetError(f"{name} must be a whole number, not {short(text[:20])}")
    return int_field({name: int(text)}, name, low, high)


def pixels_from_json(pixels):
    """784 numbers in [0, 1] (a flat list, or 28 lists of 28) -> (28, 28) float64."""
    if not isinstance(pixels, list):
        raise LenetError(f"'pixels' must be a list of {NUM_PIXELS} numbers, not a JSON {type(pixels).__name__}")
    if pixels and all(isinstance(row, list) for row in pixels):
        pixels = [v for row in pixels for v in row]
    if len(pixels) != NUM_PIXELS:
        raise LenetError(f"'pixels' must hold {NUM_PIXELS} numbers (28 x 28), got {len(pixels)}")
    for v in pixels:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise LenetError(f"'pixels' must hold numbers only, found {json.dumps(v)[:40]}")
        if not math.isfinite(v):
            raise LenetError("'pixels' holds a number that is not finite (NaN or infinity)")
        if not 0 <= v <= 1:
            raise LenetError(f"'pixels' must lie in [0, 1], found {v}")
    return np.asarray(pixels, dtype=np.float64).reshape(SIZE, SIZE)


def image_bytes(image):
    """'data:image/png;base64,....' or plain base64 -> bytes."""
    if not isinstance(image, str):
        raise LenetError(f"'image' must be a base64 string, not a JSON {type(image).__name__}")
    if image.startswith("data:"):
        header, _, image = image.partition(",")
        if not header.endswith(";base64"):
            raise LenetError("'image' is a data: URL that is not base64")
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError) as e:
        raise LenetError(f"'image' is not valid base64 ({e})") from None
