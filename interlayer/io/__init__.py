"""Files and records: atomic writes and checksums (:mod:`.files`), JSON lines,
dtype names, seeding and checkpoint identity. Imports nothing above :mod:`interlayer.errors`."""
