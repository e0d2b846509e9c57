// Kernel paths and the choice between them. The choice is made once (from CPUID, or from
// INT8KIT_ISA) and can be lowered later with set_active_isa(), e.g. by tests.
#pragma once

#include <string>

namespace int8kit {

// avx_vnni: AVX2 plus the VEX-encoded vpdpbusd (CPUs with VNNI but no AVX-512).
// amx_int8: AVX-512 VNNI plus AMX tiles (tdpbusd) for the GEMM.
enum class Isa : int { scalar = 0, avx2 = 1, avx512_vnni = 2, avx_vnni = 3, amx_int8 = 4 };

const char* isa_name(Isa isa);
// Parses "scalar" | "avx2" | "avx_vnni" | "avx512_vnni" | "amx_int8"; throws std::invalid_argument
// otherwise.
Isa parse_isa(const std::string& name);
// Whether this build has the path and this CPU (and OS) can run it.
bool isa_supported(Isa isa);
Isa best_supported_isa();
// The path in use. First call: INT8KIT_ISA if set (throws std::runtime_error when that
// path cannot run here; never SIGILL), else the best supported one.
Isa active_isa();
// Why active_isa() is what it is (for `int8kit info`).
std::string active_isa_reason();
// Forces a path; throws std::runtime_error when it cannot run on this CPU.
void set_active_isa(Isa isa);

}  // namespace int8kit
