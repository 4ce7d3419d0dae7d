"""Tests for vla_ros.imaging.decode (raw and compressed decoding, no cv_bridge)."""

import array

import numpy as np
import pytest

from vla_ros.imaging.decode import (
    SUPPORTED_ENCODINGS,
    ImageDecodeError,
    decode_compressed,
    decode_raw,
    encode_compressed,
    encode_raw,
)

RNG = np.random.default_rng(1234)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)  # odd sizes on purpose
GREY = np.repeat(RNG.integers(0, 256, size=(5, 7, 1), dtype=np.uint8), 3, axis=2)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("padding", [0, 3])
def test_color_round_trip(encoding, padding):
    enc, step, data = encode_raw(RGB, encoding, row_padding=padding)
    assert enc == encoding
    channels = 3 if encoding in ("rgb8", "bgr8") else 4
    assert step == 7 * channels + padding
    assert len(data) == step * 5
    out = decode_raw(5, 7, enc, step, data)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1", "mono16", "16UC1"])
@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("bigendian", [0, 1])
def test_grey_round_trip(encoding, padding, bigendian):
    enc, step, data = encode_raw(GREY, encoding, row_padding=padding, is_bigendian=bigendian)
    depth = 2 if "16" in encoding else 1
    assert step == 7 * depth + padding
    out = decode_raw(5, 7, enc, step, data, is_bigendian=bigendian)
    np.testing.assert_array_equal(out, GREY)  # grey replicated into 3 channels


def test_bgr_bytes_are_reordered():
    # One pixel, bytes B=1 G=2 R=3.
    np.testing.assert_array_equal(decode_raw(1, 1, "bgr8", 3, b"\x01\x02\x03"), [[[3, 2, 1]]])
    np.testing.assert_array_equal(decode_raw(1, 1, "bgra8", 4, b"\x01\x02\x03\xff"), [[[3, 2, 1]]])
    np.testing.assert_array_equal(decode_raw(1, 1, "rgba8", 4, b"\x01\x02\x03\xff"), [[[1, 2, 3]]])
    np.testing.assert_array_equal(decode_raw(1, 1, "mono8", 1, b"\x07"), [[[7, 7, 7]]])


def test_mono16_endianness_and_high_byte():
    # Value 0x1234: little endian bytes 34 12, big endian 12 34; high byte 0x12 = 18.
    assert decode_raw(1, 1, "mono16", 2, b"\x34\x12", is_bigendian=0)[0, 0, 0] == 0x12
    assert decode_raw(1, 1, "16UC1", 2, b"\x12\x34", is_bigendian=1)[0, 0, 0] == 0x12


def test_rgb8_is_zero_copy():
    _, step, data = encode_raw(RGB, "rgb8", row_padding=2)
    buf = bytearray(data)
    out = decode_raw(5, 7, "rgb8", step, buf)
    assert np.shares_memory(out, np.frombuffer(buf, np.uint8))
    # memoryview (what rclpy gives for uint8[] fields in some versions) works too.
    out2 = decode_raw(5, 7, "rgb8", step, memoryview(buf))
    np.testing.assert_array_equal(out2, RGB)
    # copy=True gives an independent, writeable, contiguous array.
    out3 = decode_raw(5, 7, "rgb8", step, bytes(buf), copy=True)
    assert out3.flags.c_contiguous and out3.flags.writeable
    assert not np.shares_memory(out3, np.frombuffer(buf, np.uint8))


def test_rclpy_buffer_types():
    # rclpy represents uint8[] as array.array('B'); some code paths give lists.
    _, step, data = encode_raw(RGB, "bgr8")
    np.testing.assert_array_equal(decode_raw(5, 7, "bgr8", step, array.array("B", data)), RGB)
    np.testing.assert_array_equal(decode_raw(5, 7, "bgr8", step, list(data)), RGB)
    with pytest.raises(ImageDecodeError, match="bytes-like"):
        decode_raw(5, 7, "bgr8", step, 12345)


def test_converted_outputs_are_contiguous():
    for enc in ("bgr8", "rgba8", "bgra8", "mono8", "mono16"):
        e, step, data = encode_raw(RGB, enc, row_padding=1)
        assert decode_raw(5, 7, e, step, data).flags.c_contiguous


def test_error_wrong_size_says_expected_and_got():
    _, step, data = encode_raw(RGB, "rgb8")
    with pytest.raises(ImageDecodeError, match=r"rgb8 image 7x5 with step 21 needs 105 bytes, got 104"):
        decode_raw(5, 7, "rgb8", step, data[:-1])
    with pytest.raises(ImageDecodeError, match="needs 105 bytes, got 106"):
        decode_raw(5, 7, "rgb8", step, data + b"\x00")


def test_error_step_too_small():
    with pytest.raises(ImageDecodeError, match=r"needs step >= 21 bytes per row, got step 20"):
        decode_raw(5, 7, "rgb8", 20, bytes(100))


def test_error_unknown_encoding_lists_supported():
    with pytest.raises(ImageDecodeError) as info:
        decode_raw(5, 7, "yuv422", 14, bytes(70))
    msg = str(info.value)
    assert "'yuv422'" in msg
    for enc in SUPPORTED_ENCODINGS:
        assert enc in msg


@pytest.mark.parametrize("h,w", [(0, 7), (5, 0), (0, 0)])
def test_error_zero_size(h, w):
    with pytest.raises(ImageDecodeError, match="zero-size image"):
        decode_raw(h, w, "rgb8", w * 3, b"")


def test_error_is_a_value_error():
    assert issubclass(ImageDecodeError, ValueError)


def test_compressed_png_round_trip_exact():
    data = encode_compressed(RGB, "png")
    np.testing.assert_array_equal(decode_compressed("png", data), RGB)
    # The format string is informational; the codec is detected from the bytes.
    np.testing.assert_array_equal(decode_compressed("rgb8; png compressed bgr8", memoryview(data)), RGB)


def test_compressed_jpeg_round_trip_close():
    # A smooth image survives JPEG well; check channel order and approximate values.
    y, x = np.mgrid[0:32, 0:48]
    img = np.stack([x * 5, y * 7, np.full_like(x, 200)], axis=2).astype(np.uint8)
    data = encode_compressed(img, "jpeg", quality=95)
    out = decode_compressed("jpeg", data)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 3.0
    # Red ramps with x, blue is constant 200: channel order is RGB, not BGR.
    assert abs(int(out[:, :, 2].mean()) - 200) < 3


def _damaged_jpeg() -> bytes:
    """A JPEG with 100 bytes cut from its entropy-coded data: libjpeg still decodes it (grey blocks)
    but warns "Corrupt JPEG data: premature end of data segment"."""
    import cv2

    smooth = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8), (9, 9), 3)
    data = bytearray(encode_compressed(smooth, "jpeg"))
    del data[len(data) // 2: len(data) // 2 + 100]
    return bytes(data)


def test_damaged_jpeg_is_refused_with_libjpeg_reason_and_nothing_on_stderr(capfd):
    with pytest.raises(ImageDecodeError, match=r"Corrupt JPEG data: premature end of data segment .*frame skipped"):
        decode_compressed("jpeg", _damaged_jpeg())
    out, err = capfd.readouterr()
    assert "Corrupt JPEG" not in err and "Corrupt JPEG" not in out


def test_codec_message_capture_passes_other_stderr_output_through(capfd):
    import os

    from vla_ros.imaging.decode import _codec_messages

    with _codec_messages() as lines:
        os.write(2, b"Corrupt JPEG data: 3 extraneous bytes before marker 0xd9\n")
        os.write(2, b"[WARN] another thread's log line\n")
    assert lines == ["Corrupt JPEG data: 3 extraneous bytes before marker 0xd9"]
    assert capfd.readouterr().err == "[WARN] another thread's log line\n"
    os.write(2, b"after\n")  # fd 2 is restored
    assert capfd.readouterr().err == "after\n"


def test_compressed_errors():
    jpeg = encode_compressed(RGB, "jpeg")
    png = encode_compressed(RGB, "png")
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode_compressed("jpeg", jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode_compressed("jpeg", jpeg[:-1])
    # Valid markers, garbage in between: the codec rejects it.
    corrupt = jpeg[:4] + bytes(64) + jpeg[-2:]
    with pytest.raises(ImageDecodeError, match="corrupt or truncated JPEG"):
        decode_compressed("jpeg", corrupt)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated PNG"):
        decode_compressed("png", png[: len(png) // 2])
    with pytest.raises(ImageDecodeError, match="zero-size compressed image"):
        decode_compressed("jpeg", b"")
    with pytest.raises(ImageDecodeError, match="neither JPEG nor PNG"):
        decode_compressed("jpeg", b"GIF89a....")
    with pytest.raises(ImageDecodeError, match="compressedDepth"):
        decode_compressed("16UC1; compressedDepth png", png)


def test_encode_raw_validation():
    with pytest.raises(ValueError, match="unsupported"):
        encode_raw(RGB, "yuv422")
    with pytest.raises(ValueError, match="uint8 RGB"):
        encode_raw(RGB.astype(np.float32), "rgb8")
