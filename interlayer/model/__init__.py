"""The model: the adapter over the user's own model (structure, sites and hooks in
:mod:`.adapter`; forward passes in :mod:`.passes`; positions in :mod:`.positions`), the
one table of architecture quirks (:mod:`.architectures`), loading and the conversion
cache of the embedded models, site names, and model facts (:mod:`.info`)."""
