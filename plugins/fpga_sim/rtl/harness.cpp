// Verilator harness for bitserial_dpa.v: load the memories, run the instruction program, report the
// cycle count the array measured and every result accumulator.
//
// usage: prog INPUT OUTPUT
// INPUT (little-endian): uint32 magic 0x4D505144 ("DQPM"), version 1, DM, DN, DK, LDEPTH, RDEPTH, IDEPTH,
//   RESDEPTH, LHS writes, RHS writes, instructions, results to read; then the LHS and RHS writes as
//   uint32 (address, 32-bit slice) pairs, the instructions as uint64.
// OUTPUT: uint32 cycles, uint32 clock ticks from start to done, then the int32 results.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "Vbitserial_dpa.h"
#include "verilated.h"

static Vbitserial_dpa* top;
static uint64_t ticks = 0;

static void tick() {
  top->clk = 0;
  top->eval();
  top->clk = 1;
  top->eval();
  ++ticks;
}

static void fail(const char* what) {
  std::fprintf(stderr, "bitserial_dpa harness: %s\n", what);
  std::exit(2);
}

template <typename T>
static std::vector<T> read_array(FILE* f, size_t n) {
  std::vector<T> v(n);
  if (n && std::fread(v.data(), sizeof(T), n, f) != n) fail("short input file");
  return v;
}

int main(int argc, char** argv) {
  if (argc != 3) fail("usage: prog INPUT OUTPUT");
  FILE* in = std::fopen(argv[1], "rb");
  if (!in) fail("cannot open input");
  std::vector<uint32_t> head = read_array<uint32_t>(in, 13);
  if (head[0] != 0x4D505144u || head[1] != 1) fail("bad magic or version");
  const uint32_t expect[7] = {DPA_DM, DPA_DN, DPA_DK, DPA_LDEPTH, DPA_RDEPTH, DPA_IDEPTH, DPA_RESDEPTH};
  for (int k = 0; k < 7; ++k)
    if (head[2 + k] != expect[k]) fail("array parameters differ from the build");
  std::vector<uint32_t> lhs = read_array<uint32_t>(in, 2 * size_t(head[9]));
  std::vector<uint32_t> rhs = read_array<uint32_t>(in, 2 * size_t(head[10]));
  std::vector<uint64_t> ins = read_array<uint64_t>(in, head[11]);
  const uint32_t n_res = head[12];
  std::fclose(in);

  VerilatedContext* ctx = new VerilatedContext;
  top = new Vbitserial_dpa{ctx};
  top->rst = 1;
  tick();
  tick();
  top->rst = 0;
  for (size_t k = 0; k < lhs.size(); k += 2) {
    top->lhs_we = 1; top->lhs_waddr = lhs[k]; top->lhs_wdata = lhs[k + 1]; tick();
  }
  top->lhs_we = 0;
  for (size_t k = 0; k < rhs.size(); k += 2) {
    top->rhs_we = 1; top->rhs_waddr = rhs[k]; top->rhs_wdata = rhs[k + 1]; tick();
  }
  top->rhs_we = 0;
  for (size_t k = 0; k < ins.size(); ++k) {
    top->ins_we = 1; top->ins_waddr = k; top->ins_wdata = ins[k]; tick();
  }
  top->ins_we = 0;
  top->n_ins = ins.size();
  top->start = 1;
  tick();
  top->start = 0;
  const uint64_t t0 = ticks;
  while (!top->done) {
    tick();
    if (ticks - t0 > 2000000000ull) fail("no done after 2e9 cycles");
  }
  const uint32_t measured = top->cycles;
  const uint32_t elapsed = static_cast<uint32_t>(ticks - t0);

  FILE* out = std::fopen(argv[2], "wb");
  if (!out) fail("cannot open output");
  std::fwrite(&measured, 4, 1, out);
  std::fwrite(&elapsed, 4, 1, out);
  for (uint32_t k = 0; k < n_res; ++k) {
    top->res_raddr = k;
    top->eval();
    const uint32_t v = top->res_rdata;
    std::fwrite(&v, 4, 1, out);
  }
  std::fclose(out);
  top->final();
  delete top;
  delete ctx;
  return 0;
}
