"""interlayer.saes"""
