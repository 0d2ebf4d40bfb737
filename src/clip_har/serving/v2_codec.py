"""The wire format of the Open Inference Protocol (KServe v2 / Triton HTTP), as pure functions.

An inference request is a JSON object, optionally followed by raw tensor bytes (the *binary
tensor data extension*): the ``Inference-Header-Content-Length`` header gives the length of the
JSON part, and every input whose ``parameters.binary_data_size`` is set takes that many bytes of
the rest, in input order. Binary data is little-endian, row-major; a ``BYTES`` element is a
4-byte little-endian length followed by that many bytes. Responses use the same layout for the
outputs asked for in binary. Every malformation raises :class:`V2FormatError` (a 400 answer).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clip_har.errors import V2FormatError

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"

# protocol datatype -> little-endian numpy dtype (BYTES is handled apart)
NUMPY_TYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?",
        "UINT8": "<u1",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
        "INT8": "<i1",
        "INT16": "<i2",
        "INT32": "<i4",
        "INT64": "<i8",
        "FP16": "<f2",
        "FP32": "<f4",
        "FP64": "<f8",
    }.items()
}
DATATYPES = frozenset({*NUMPY_TYPES, "BYTES"})
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class InputTensor:
    """One decoded input. ``data`` has the tensor's ``shape``; for ``BYTES`` it is an object
    array of :class:`bytes` (JSON strings are UTF-8 encoded). ``binary`` says whether the data
    came as binary tensor data rather than JSON."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    binary: bool
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for, and whether it wants it as binary data."""

    name: str
    binary: bool
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferenceRequest:
    """A decoded inference request. ``outputs`` is ``None`` when the client named none (then
    every output is returned, binary when ``binary_output`` is true)."""

    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None
    binary_output: bool
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputTensor:
    """One output of a response. ``data`` is a numeric array, or for ``BYTES`` a sequence of
    ``bytes``/``str`` elements in row-major order."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | Sequence[bytes | str]
    binary: bool


# ----------------------------------------------------------------------------- BYTES elements


def serialize_bytes(elements: Iterable[bytes | str]) -> bytes:
    """``BYTES`` elements as binary tensor data: each a 4-byte LE length, then its bytes."""
    parts: list[bytes] = []
    for element in elements:
        raw = element.encode("utf-8") if isinstance(element, str) else bytes(element)
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes(buffer: bytes | memoryview, *, name: str = "tensor") -> list[bytes]:
    """The ``BYTES`` elements of binary tensor data (a length prefix must fit the buffer)."""
    view = memoryview(buffer)
    elements: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + _LENGTH.size > len(view):
            raise V2FormatError(
                f"input {name!r}: binary BYTES data ends inside an element's 4-byte length"
            )
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > len(view):
            raise V2FormatError(
                f"input {name!r}: a binary BYTES element of {length} bytes runs past the "
                f"end of the tensor's {len(view)} bytes"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


# ----------------------------------------------------------------------------- requests


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a request or response body."""
    if header_length is None or header_length.strip() == "":
        return body, memoryview(b"")
    try:
        length = int(header_length.strip())
    except ValueError:
        raise V2FormatError(
            f"{HEADER_LENGTH} must be a whole number of bytes, got {header_length!r}"
        ) from None
    if length < 0 or length > len(body):
        raise V2FormatError(f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes")
    return body[:length], memoryview(body)[length:]


def _reject_constant(name: str) -> Any:
    raise V2FormatError(f"the JSON holds {name}, which is not valid JSON")


def _load_json(text: bytes) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise V2FormatError(
            "the JSON part is not UTF-8; binary data needs the binary tensor data extension "
            f"({HEADER_LENGTH})"
        ) from None
    except json.JSONDecodeError as exc:
        hint = (
            f" (binary data after the JSON needs the {HEADER_LENGTH} header)"
            if exc.msg == "Extra data"
            else ""
        )
        raise V2FormatError(
            f"the request is not valid JSON: {exc.msg} at {exc.pos}{hint}"
        ) from None


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2FormatError(f"{where}: 'parameters' must be an object")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(dim) and dim >= 0 for dim in value):
        raise V2FormatError(f"{where}: 'shape' must be a list of non-negative integers")
    return tuple(value)


def _flatten(value: Any, out: list[Any]) -> None:
    if isinstance(value, list):
        for item in value:
            _flatten(item, out)
    else:
        out.append(value)


def _json_tensor(
    name: str, datatype: str, shape: tuple[int, ...], data: Any, count: int
) -> np.ndarray:
    flat: list[Any] = []
    _flatten(data, flat)
    if len(flat) != count:
        raise V2FormatError(
            f"input {name!r}: 'data' has {len(flat)} elements but shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        if not all(isinstance(item, str) for item in flat):
            raise V2FormatError(f"input {name!r}: BYTES elements in JSON must be strings")
        array = np.empty(count, dtype=object)
        array[:] = [item.encode("utf-8") for item in flat]
        return array.reshape(shape)
    if datatype == "BOOL":
        if not all(isinstance(item, bool) for item in flat):
            raise V2FormatError(f"input {name!r}: BOOL elements must be true or false")
    elif not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in flat):
        raise V2FormatError(f"input {name!r}: {datatype} elements must be numbers")
    elif datatype not in {"FP16", "FP32", "FP64"} and not all(_is_int(item) for item in flat):
        raise V2FormatError(f"input {name!r}: {datatype} elements must be integers")
    dtype = NUMPY_TYPES[datatype]
    try:
        with np.errstate(over="raise", invalid="raise"):
            array = np.array(flat, dtype=dtype)
    except (OverflowError, FloatingPointError, ValueError):
        raise V2FormatError(f"input {name!r}: a value does not fit {datatype}") from None
    return array.reshape(shape)


def _binary_tensor(
    name: str, datatype: str, shape: tuple[int, ...], raw: memoryview, count: int
) -> np.ndarray:
    if datatype == "BYTES":
        elements = deserialize_bytes(raw, name=name)
        if len(elements) != count:
            raise V2FormatError(
                f"input {name!r}: binary data holds {len(elements)} BYTES elements but shape "
                f"{list(shape)} needs {count}"
            )
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array.reshape(shape)
    dtype = NUMPY_TYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise V2FormatError(
            f"input {name!r}: binary_data_size is {len(raw)} bytes but shape {list(shape)} of "
            f"{datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def decode_request(body: bytes, header_length: str | None = None) -> InferenceRequest:
    """Decode an inference request body (``header_length``: the value of the
    ``Inference-Header-Content-Length`` header, if any)."""
    head, binary = split_body(body, header_length)
    document = _load_json(head)
    if not isinstance(document, dict):
        raise V2FormatError("the inference request must be a JSON object")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2FormatError("'id' must be a string")
    parameters = _parameters(document.get("parameters"), "request")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise V2FormatError("parameter 'binary_data_output' must be true or false")

    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise V2FormatError("'inputs' must be a non-empty list")
    inputs: list[InputTensor] = []
    offset = 0
    for index, raw in enumerate(raw_inputs):
        tensor, offset = _decode_input(raw, index, binary, offset)
        if any(other.name == tensor.name for other in inputs):
            raise V2FormatError(f"input {tensor.name!r} is given twice")
        inputs.append(tensor)
    if offset != len(binary):
        raise V2FormatError(
            f"the body has {len(binary) - offset} bytes of binary data that no input claims "
            f"(the binary_data_size values add up to {offset} of {len(binary)})"
        )
    return InferenceRequest(
        id=request_id,
        inputs=inputs,
        outputs=_decode_outputs(document.get("outputs")),
        binary_output=binary_output,
        parameters=parameters,
    )


def _decode_input(raw: Any, index: int, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(raw, dict):
        raise V2FormatError(f"inputs[{index}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise V2FormatError(f"inputs[{index}]: 'name' must be a non-empty string")
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        raise V2FormatError(
            f"input {name!r}: unknown datatype {datatype!r}; one of {', '.join(sorted(DATATYPES))}"
        )
    shape = _shape(raw.get("shape"), f"input {name!r}")
    count = math.prod(shape)
    parameters = _parameters(raw.get("parameters"), f"input {name!r}")
    if "shared_memory_region" in parameters:
        raise V2FormatError(f"input {name!r}: shared memory is not supported over this server")
    size = parameters.get("binary_data_size")
    if size is None:
        if "data" not in raw:
            raise V2FormatError(f"input {name!r} has neither 'data' nor binary_data_size")
        data = _json_tensor(name, datatype, shape, raw["data"], count)
        return InputTensor(name, datatype, shape, data, False, parameters), offset
    if "data" in raw:
        raise V2FormatError(f"input {name!r} has both 'data' and binary_data_size")
    if not _is_int(size) or size < 0:
        raise V2FormatError(f"input {name!r}: binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise V2FormatError(
            f"input {name!r}: binary_data_size is {size} but only {len(binary) - offset} bytes "
            "of binary data are left in the body"
        )
    data = _binary_tensor(name, datatype, shape, binary[offset : offset + size], count)
    return InputTensor(name, datatype, shape, data, True, parameters), offset + size


def _decode_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise V2FormatError("'outputs' must be a list")
    outputs: list[RequestedOutput] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise V2FormatError(f"outputs[{index}] must be an object with a string 'name'")
        name = item["name"]
        parameters = _parameters(item.get("parameters"), f"output {name!r}")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise V2FormatError(f"output {name!r}: binary_data must be true or false")
        if "shared_memory_region" in parameters:
            raise V2FormatError(f"output {name!r}: shared memory is not supported over this server")
        if any(other.name == name for other in outputs):
            raise V2FormatError(f"output {name!r} is requested twice")
        outputs.append(RequestedOutput(name, bool(binary), parameters))
    return outputs


def encode_request(
    inputs: Sequence[tuple[str, str, Sequence[int], np.ndarray | Sequence[bytes | str]]],
    *,
    request_id: str | None = None,
    outputs: Mapping[str, bool] | None = None,
    binary_inputs: bool = True,
) -> tuple[bytes, int | None]:
    """An inference request body from ``(name, datatype, shape, data)`` inputs, and the value
    of ``Inference-Header-Content-Length`` (``None`` when no binary data follows).
    ``outputs`` maps requested output names to "as binary"."""
    document: dict[str, Any] = {}
    if request_id is not None:
        document["id"] = request_id
    blobs: list[bytes] = []
    entries: list[dict[str, Any]] = []
    for name, datatype, shape, data in inputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(shape)}
        if binary_inputs:
            blob = _tensor_bytes(datatype, data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(datatype, data)
        entries.append(entry)
    document["inputs"] = entries
    if outputs is not None:
        document["outputs"] = [
            {"name": name, "parameters": {"binary_data": binary}}
            for name, binary in outputs.items()
        ]
    head = json.dumps(document, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


# ----------------------------------------------------------------------------- responses


def _tensor_bytes(datatype: str, data: np.ndarray | Sequence[bytes | str]) -> bytes:
    if datatype == "BYTES":
        elements = data.ravel().tolist() if isinstance(data, np.ndarray) else list(data)
        return serialize_bytes(elements)
    array = np.ascontiguousarray(np.asarray(data), dtype=NUMPY_TYPES[datatype])
    return array.tobytes()


def _json_data(datatype: str, data: np.ndarray | Sequence[bytes | str]) -> list[Any]:
    if datatype == "BYTES":
        elements = data.ravel().tolist() if isinstance(data, np.ndarray) else list(data)
        return [
            item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
            for item in elements
        ]
    values: list[Any] = np.asarray(data, dtype=NUMPY_TYPES[datatype]).ravel().tolist()
    return values


def encode_response(
    *,
    model_name: str,
    model_version: str | None,
    outputs: Sequence[OutputTensor],
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """An inference response body, and the value of ``Inference-Header-Content-Length``
    (``None`` when every output is JSON, so the body is plain JSON)."""
    document: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        document["model_version"] = model_version
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = dict(parameters)
    blobs: list[bytes] = []
    entries: list[dict[str, Any]] = []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.shape),
        }
        if output.binary:
            blob = _tensor_bytes(output.datatype, output.data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(output.datatype, output.data)
        entries.append(entry)
    document["outputs"] = entries
    head = json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def decode_response(body: bytes, header_length: str | None = None) -> dict[str, np.ndarray]:
    """The outputs of an inference response as arrays by name (``BYTES`` as object arrays of
    ``bytes``); the inverse of :func:`encode_response`."""
    head, binary = split_body(body, header_length)
    document = _load_json(head)
    result: dict[str, np.ndarray] = {}
    offset = 0
    for output in document.get("outputs", []):
        name, datatype, shape = output["name"], output["datatype"], tuple(output["shape"])
        size = output.get("parameters", {}).get("binary_data_size")
        count = math.prod(shape)
        if size is None:
            result[name] = _json_tensor(name, datatype, shape, output["data"], count)
        else:
            result[name] = _binary_tensor(
                name, datatype, shape, binary[offset : offset + size], count
            )
            offset += size
    return result
