"""Progress bars that cost nothing when switched off (tests, library use, headless runs)."""

from __future__ import annotations


class NoProgress:
    total = 0

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "req"):
    if not enabled:
        return NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)
