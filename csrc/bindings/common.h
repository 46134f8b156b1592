// Shared helpers of the pybind11 layer, the only part of the core that knows about Python.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/error.h"
#include "plan/feature_plan.h"

namespace mlserve::bindings {

namespace py = pybind11;

// Float32, C-contiguous input as the core wants it (numpy converts other dtypes/layouts).
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// The class of mlserve.errors for a core error code (borrowed; mlserve.errors stays imported).
PyObject* ErrorClass(ErrorCode code);

// Maps the Python exception being handled (e.g. raised by a Python backend) to a core Error.
// Call with the GIL held, inside `catch (py::error_already_set& e)`.
Error ToCoreError(py::error_already_set& e, const std::string& context);

// x as float32 C-contiguous [rows, plan.f_in()] (numpy converts other dtypes/layouts), or
// InvalidInput saying what shape was expected.
FloatArray InputRows(const py::object& x, const FeaturePlan& plan);

void BindPlan(py::module_& m);
void BindBatcher(py::module_& m);
void BindDevice(py::module_& m);
void BindLmdb(py::module_& m);

}  // namespace mlserve::bindings
