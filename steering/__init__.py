"""interlayer.steering"""
