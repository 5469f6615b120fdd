"""balora.cli"""
