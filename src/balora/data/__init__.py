"""balora.data"""
