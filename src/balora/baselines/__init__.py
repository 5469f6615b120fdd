"""balora.baselines"""
