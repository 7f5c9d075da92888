"""Files and records: atomic writes and checksums (:mod:`.files`), JSON lines
(:mod:`.json_records`), resume journals (:mod:`.journal`), dtype names, seeding and
checkpoint identity. Imports nothing above :mod:`interlayer.errors`."""
