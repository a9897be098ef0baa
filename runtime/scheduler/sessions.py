"""onnxruntime sessions built for the device the scheduler chose, and only for that device.

Where onnxruntime has its device API (``get_ep_devices`` + ``SessionOptions.add_provider_for_devices``)
the session is bound to the matching OrtEpDevice; otherwise the provider list names exactly one
provider. After creation the session's providers are checked: onnxruntime silently falls back to CPU
when an accelerator fails to initialise, and a silent fallback could move PHI off the device the
policy approved.
"""

from __future__ import annotations

import os
from typing import Any

from sealinfer.runtime.scheduler.devices import DeviceDescriptor
from sealinfer.runtime.scheduler.placement import DeviceUnavailableError


def _matching_ep_devices(ort: Any, device: DeviceDescriptor) -> list[Any]:
    matches = [d for d in ort.get_ep_devices() if d.ep_name == device.provider]
    wanted = device.provider_options.get("device_id")
    if wanted is not None and len(matches) > 1:
        matches = [d for d in matches if str(d.device.device_id) == wanted] or matches[int(wanted) : int(wanted) + 1]
    return matches[:1]


def session_options_for(device: DeviceDescriptor) -> tuple[Any, list[Any]]:
    """(SessionOptions, providers) for ``device``; providers is [] when the options already hold the EP."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if device.intra_op_threads:
        options.intra_op_num_threads = device.intra_op_threads
    options.inter_op_num_threads = 1
    if device.kind == "cpu" and device.intra_op_threads and device.intra_op_threads < (os.cpu_count() or 1):
        # A CPU "device" that is a partition of shared cores must not spin: its idle threads would
        # steal the cores another partition was promised. A device spanning every core keeps
        # onnxruntime's default (spinning), which is faster for back-to-back requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if device.provider not in ort.get_available_providers():
        raise DeviceUnavailableError(
            f"device {device.id!r} needs {device.provider}, which this onnxruntime does not offer "
            f"(available: {', '.join(ort.get_available_providers())}).",
            hint="Install the onnxruntime build for that accelerator, or re-place the model on another device.",
        )
    if hasattr(ort, "get_ep_devices") and hasattr(options, "add_provider_for_devices"):
        ep_devices = _matching_ep_devices(ort, device)
        if ep_devices:
            options.add_provider_for_devices(ep_devices, dict(device.provider_options))
            return options, []
    return options, [(device.provider, dict(device.provider_options))]


def create_session(model: bytes, device: DeviceDescriptor) -> Any:
    """An InferenceSession on ``device``; DeviceUnavailableError if onnxruntime would run it elsewhere."""
    import onnxruntime as ort

    options, providers = session_options_for(device)
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=providers or None)
    except Exception as exc:
        raise DeviceUnavailableError(
            f"device {device.id!r} could not start a session: {exc}.",
            hint="Check the device's driver, or re-place the model on another device.",
        ) from exc
    if session.get_providers()[0] != device.provider:
        raise DeviceUnavailableError(
            f"onnxruntime placed the session on {session.get_providers()[0]} instead of {device.provider} "
            f"for device {device.id!r}.",
            hint="The accelerator failed to initialise; re-place the model on another compliant device.",
        )
    return session
