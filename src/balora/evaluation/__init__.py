"""balora.evaluation"""
