"""balora.analysis"""
