"""TensorBoard scalars of a training run (``sne train --log-dir``): one point per epoch and tag.

Needs the ``tensorboard`` package (``pip install 'sne[tb]'``). A resumed run opens its writer with
``purge_step`` set to the first epoch it trains, so TensorBoard drops whatever an interrupted
process wrote for that epoch or later and shows every epoch once, as ``history.json`` lists it.
Epochs trained before ``--log-dir`` was first given are not written.
"""

from __future__ import annotations

from pathlib import Path

from sne.errors import SneError, one_line

#: TensorBoard tag -> key of a ``history.json`` entry.
SCALARS = {
    "loss/train": "train_loss",
    "loss/val": "val_loss",
    "loss/invariance": "invariance_loss",
    "lr": "lr",
}


def require_tensorboard() -> None:
    """:class:`SneError` saying how to install TensorBoard if it is missing."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise SneError("--log-dir writes TensorBoard scalars and needs the tensorboard package: "
                       "pip install 'sne[tb]'") from None


class ScalarLog:
    """Writes each epoch's :data:`SCALARS` into ``log_dir``, from epoch ``first_epoch`` on."""

    def __init__(self, log_dir: str | Path, first_epoch: int) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        try:
            self.writer = SummaryWriter(str(self.log_dir), purge_step=first_epoch)
        except OSError as error:
            raise SneError(f"{self.log_dir}: cannot write TensorBoard scalars there "
                           f"({error.strerror or one_line(error)})") from None

    def write(self, entry: dict) -> None:
        """Add one ``history.json`` entry and flush it, so a kill loses no finished epoch."""
        try:
            for tag, key in SCALARS.items():
                self.writer.add_scalar(tag, entry[key], entry["epoch"])
            self.writer.flush()
        except OSError as error:
            raise SneError(f"{self.log_dir}: cannot write TensorBoard scalars there "
                           f"({error.strerror or one_line(error)})") from None

    def close(self) -> None:
        self.writer.close()
