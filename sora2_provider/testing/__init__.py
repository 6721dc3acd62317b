"""Test your DAGs against a local Segmind emulator over real HTTP, without a key or credits.

Public and stable: :mod:`~sora2_provider.testing.emulator` (:class:`Sora2Emulator`, its control methods and the
``sora2-emulator`` command), :mod:`~sora2_provider.testing.video` (the MP4 helpers) and
:mod:`~sora2_provider.testing.backend` (the emulated account) keep their names within a major version.
Modules whose names start with ``_`` are internal. Install the ``emulator`` extra to use them.
"""
