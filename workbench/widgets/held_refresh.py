"""One refresh after several control changes, for widgets whose observers each refresh."""

from __future__ import annotations

from contextlib import contextmanager


class HeldRefresh:
    """Mixin for a widget with a `refresh()`: inside `with self.hold():` observers that check
    `self._held` skip their refresh, and one refresh runs at the end."""

    _held = False

    @contextmanager
    def hold(self):
        self._held = True
        try:
            yield
        finally:
            self._held = False
        self.refresh()
