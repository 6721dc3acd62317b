"""Constants shared by the hook tests and their fixtures."""

HOOK_KEY = "SG_hooktestsecret42"
RATE_WINDOW = 0.6  # seconds: the emulator's rate-limit window, so a 429 resets quickly
TIME_SCALE = 0.002  # emulator clock: a 180 s sora-2 render takes 0.36 s
