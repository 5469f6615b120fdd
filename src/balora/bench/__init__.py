"""balora.bench"""
