"""The widgets of ``quotad top``; each renders one part of a :class:`~quotad.tui.monitor.Monitor`
through ``show(monitor)`` and reports what the user asks for through its nested ``Message``
classes."""
