"""``sealinfer watermark``: embed and detect keyed weight watermarks (mirrors ``sealinfer.watermark``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sealinfer.runtime.cli.common import echo_json, keyring_option, load_npz, open_keyring
from sealinfer.runtime.errors import ConfigurationError, NotOnnxError

_KEY_FILE_HELP = "File holding the 32-byte watermark key as 64 hex characters (instead of the keyring's)."


def _key(key_file: Path | None, keyring_path: Path) -> tuple[str, bytes]:
    """(key id, key bytes) from --key-file, else the keyring's active watermark secret."""
    if key_file is not None:
        try:
            text = key_file.expanduser().read_text().strip()
            key = bytes.fromhex(text)
        except OSError as exc:
            raise ConfigurationError(f"Cannot read key file {key_file}: {exc.strerror}.",
                                     hint="Check the path and its permissions.") from None
        except ValueError:
            raise ConfigurationError(
                f"Key file {key_file} is not hex.",
                hint="It must hold 64 hex characters (32 bytes), e.g. from `openssl rand -hex 32`.",
            ) from None
        if len(key) != 32:
            raise ConfigurationError(f"Key file {key_file} holds {len(key)} bytes, not 32.",
                                     hint="Generate one with `openssl rand -hex 32`.")
        return f"file:{key_file.name}", key
    ring = open_keyring(keyring_path)
    key_id, key = ring.secret("watermark")
    return key_id, key


def _load_onnx(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise ConfigurationError(f"{path} does not exist.", hint="Pass the path of an .onnx file.")
    try:
        return onnx.load(str(path))
    except Exception:  # protobuf raises DecodeError and others
        raise NotOnnxError(f"{path} is not an ONNX model.", hint="Export the model to ONNX first.") from None


def _load_probes(path: Path) -> dict[str, Any]:
    """Probe inputs from an .npz whose arrays are named after the model's inputs (no pickles)."""
    return load_npz(path, what="probe inputs",
                    hint="Save them with numpy.savez(path, input=samples), one array per model input.")


@click.group()
def watermark() -> None:
    """Embed and detect keyed, blind watermarks in ONNX weights."""


@watermark.command("embed")
@click.argument("model_in", metavar="IN.onnx", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "model_out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the marked model.")
@click.option("--payload", required=True, help="Text to embed (UTF-8, at most 32 bytes; e.g. owner + site id).")
@click.option("--max-relative-change", type=float, default=1e-3, show_default=True,
              help="Largest allowed output change on probe inputs, relative to the mean |output|.")
@click.option("--probes", type=click.Path(dir_okay=False, path_type=Path),
              help="An .npz of representative inputs (one array per model input, by name) for the fidelity "
                   "check and for placing the noise-proof channel; default: generated standard-normal probes.")
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), help=_KEY_FILE_HELP)
@keyring_option
@click.option("--json", "as_json", is_flag=True, help="Print the receipt as JSON.")
def embed_cmd(model_in: Path, model_out: Path, payload: str, max_relative_change: float, probes: Path | None,
              key_file: Path | None, keyring_path: Path, as_json: bool) -> None:
    """Mark IN.onnx with PAYLOAD and write OUT.onnx, after checking fidelity on probe inputs."""
    from sealinfer import watermark as wm

    key_id, key = _key(key_file, keyring_path)
    model = _load_onnx(model_in)
    probe_inputs = _load_probes(probes) if probes is not None else None
    marked, receipt = wm.embed(model, key, payload.encode("utf-8"), max_relative_change=max_relative_change,
                               probe_inputs=probe_inputs)
    model_out.write_bytes(marked.SerializeToString())
    if as_json:
        echo_json({"output": str(model_out), "key_id": key_id, "commitment": receipt.commitment(),
                   "receipt": receipt.to_dict()})
        return
    f = receipt.fidelity
    click.echo(f"marked {model_in} -> {model_out} (key {key_id})")
    click.echo(f"  payload sha256 {receipt.payload_sha256}  ({receipt.payload_length} bytes)")
    click.echo(f"  {len(receipt.tensors)} tensors, {receipt.n_weights:,} weights, {receipt.hidden_layers} hidden "
               f"layers canonicalized; strength {receipt.strength['spread_rms']:.1e}")
    click.echo(f"  fidelity: max relative change {f.max_relative_change:.2e}, top-1 agreement "
               f"{f.top1_agreement:.4f} on {f.n_probes} {f.probes} probes")
    click.echo(f"  bit-exact after simulated: {', '.join(receipt.survives_simulated) or 'none'}")
    robust_a = receipt.strength.get("robust_energy", 0.0)
    if robust_a >= 200:
        note = "survives 0.1-std weight noise at p <= 1e-9"
    elif robust_a > 0:
        note = "below the ~210 that survives 0.1-std weight noise at p <= 1e-9"
    elif receipt.n_weights >= 1_000_000:
        note = "not used above 1M weights"
    else:
        note = "none placed: the fidelity bound leaves too little room"
    click.echo(f"  noise-proof channel: energy A={robust_a:.0f} ({note})")


@watermark.command("detect")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key-file", type=click.Path(dir_okay=False, path_type=Path), help=_KEY_FILE_HELP)
@keyring_option
@click.option("--payload-bits", type=int, default=256, show_default=True, help="Payload size the mark was made with.")
@click.option("--json", "as_json", is_flag=True, help="Print the detection as JSON.")
@click.pass_context
def detect_cmd(ctx: click.Context, model_path: Path, key_file: Path | None, keyring_path: Path, payload_bits: int,
               as_json: bool) -> None:
    """Look for the watermark in MODEL (.onnx, FP16/INT8 too, or .sealed). Exit 0 if found, 1 if not."""
    from sealinfer import watermark as wm

    key_id, key = _key(key_file, keyring_path)
    if model_path.suffix == ".sealed":
        try:
            from sealinfer.runtime.artifact import open_model_proto
        except ImportError:
            raise ConfigurationError("This build cannot open .sealed files.",
                                     hint="Detect on the .onnx file instead.") from None
        model = open_model_proto(model_path, open_keyring(keyring_path))
    else:
        model = _load_onnx(model_path)
    det = wm.detect(model, key, payload_bits=payload_bits)
    if as_json:
        echo_json({"model": str(model_path), "key_id": key_id, **det.to_dict()})
    else:
        text = "-" if det.payload is None else det.payload.decode("utf-8", "backslashreplace")
        click.echo(f"{'DETECTED' if det.detected else 'not detected'} with key {key_id}")
        click.echo(f"  payload        {text}")
        click.echo(f"  p-value        {det.p_value:.3g} (log10 {det.log10_p:.1f}; threshold {det.threshold_p:.0e})")
        click.echo(f"  bit error rate {det.bit_error_rate:.4f} ({det.channel} channel), score z={det.score:.1f}")
    ctx.exit(0 if det.detected else 1)
