"""Dictation (``voxcli dictate``): the microphone's words typed into whatever window has focus.

``session``: the engine thread's gated capture and the main thread's typing; ``words``: which text
is final enough to type; ``typist``: the typing backends (XTest, wtype, ydotool, the clipboard);
``xtest``: X11's characters off the layout, each pressed once the app has its mapping;
``hotkey``: the hotkey parsed and listened for; ``evdevkeys``: the keyboards read on Wayland;
``control``: ``--toggle-now`` over a local socket;
``focus``: whether voxcli's own terminal has focus. Imports live, audio and engine, never cli.
"""

from voxcli.dictate.session import DictateWorker, Dictation

__all__ = ["DictateWorker", "Dictation"]
