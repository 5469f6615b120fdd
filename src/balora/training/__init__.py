"""balora.training"""
