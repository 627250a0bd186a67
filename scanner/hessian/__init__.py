"""`scanner hessian`: does the input-space Hessian explain the perturbation attacks?"""

from scanner.hessian.run import HessianSpec, run_hessian

__all__ = ["HessianSpec", "run_hessian"]
