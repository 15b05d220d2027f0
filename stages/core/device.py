"""Where a command runs its models: one answer to `--device`, shared by every command, and the torch.compile
backend (`--compile`).

    cpu | cuda | cuda:N | mps     that device; one that is not available here is one UserError line
    auto (or None)                CUDA when there is a GPU, else Apple's MPS when there is one, else the CPU

Training does not place its model itself: accelerate does (`training_accelerator_kwargs`), so that
`accelerate launch` keeps choosing each process's GPU.
"""

import os

import torch
from vqgen.stages.core.errors import UserError

DEVICE_CHOICES = "cpu, cuda, cuda:N, mps or auto"
COMPILE_BACKEND_ENV = "VQGEN_COMPILE_BACKEND"  # the torch.compile backend of --compile (default inductor)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def check_device_name(name: str | None, flag: str = "--device") -> str:
    """The canonical spelling of a --device value ('auto' for None), or a UserError naming the choices."""
    name = (name or "auto").strip().lower()
    if name in ("cpu", "cuda", "mps", "auto"):
        return name
    if name.startswith("cuda:") and name[5:].isdigit():
        return name
    raise UserError(f"{flag} must be {DEVICE_CHOICES}, got {name!r}")


def resolve_device(name: str | None, flag: str = "--device") -> torch.device:
    """The torch.device for a --device value; a device that is not available here is one UserError line."""
    name = check_device_name(name, flag)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{flag} {name}: no CUDA device is available here (use --device cpu or auto)")
        index = int(name[5:]) if ":" in name else None
        if index is not None and index >= torch.cuda.device_count():
            raise UserError(
                f"{flag} {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
        return torch.device(name)
    if name == "mps" and not _mps_available():
        raise UserError(f"{flag} mps: no Apple MPS device is available here (use --device cpu or auto)")
    return torch.device(name)


def training_accelerator_kwargs(name: str | None, num_processes: int = 1) -> dict:
    """Accelerator(...) keyword arguments for a training --device: 'cpu' forces the CPU (Accelerator(cpu=True));
    'auto' leaves the choice to accelerate (its config file, `accelerate launch`); a named GPU is checked and, in a
    single process, made the current device so that accelerate places the model on it."""
    name = check_device_name(name)
    if name == "auto":
        # several processes and no GPU: accelerate's own choice would leave each process training alone
        alone = num_processes > 1 and not torch.cuda.is_available() and not _mps_available()
        return {"cpu": True} if alone else {}
    if name == "cpu":
        return {"cpu": True}
    device = resolve_device(name)  # refuses a device that is not here
    if device.type == "cuda" and device.index is not None:
        if num_processes > 1:
            raise UserError(
                f"--device {name}: with several processes each takes its own GPU; use --device cuda or auto"
            )
        torch.cuda.set_device(device)
    return {}


def compile_backend() -> str:
    """The torch.compile backend: $VQGEN_COMPILE_BACKEND, default inductor ('eager' only checks that it traces)."""
    return os.environ.get(COMPILE_BACKEND_ENV, "").strip() or "inductor"


def checked_compile_backend() -> str:
    """compile_backend(), refused in one line when torch does not know it (training has no eager fallback: a run
    is compiled as asked, or not started)."""
    import torch._dynamo

    backend = compile_backend()
    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise UserError(
            f"${COMPILE_BACKEND_ENV}={backend!r} is not a torch.compile backend here; use one of "
            f"{', '.join(torch._dynamo.list_backends())}, or unset it (default inductor)"
        )
    return backend
