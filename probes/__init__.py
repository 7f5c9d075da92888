"""interlayer.probes"""
