"""kvroute.proxy"""
