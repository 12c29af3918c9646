"""kvroute.admin"""
