"""interlayer.lens"""
