"""flannel"""
