"""triton_qat"""
