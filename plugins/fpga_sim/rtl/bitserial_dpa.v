// A BISMO-style bit-serial dot-product array with its instruction sequencer (the execute stage).
//
// DM x DN dot-product units; each cycle every unit (i, j) ANDs the DK-bit word of LHS row i with the
// DK-bit word of RHS column j, popcounts it and accumulates, negated when the instruction says so,
// after shifting the accumulator left by one on the first word of an instruction that starts a lower
// bit significance, or clearing it on the first word of a result tile (BISMO's ExecInstrGen order).
//
// Memories (filled through the write ports before `start`; not counted): LHS bank i = array row i,
// RHS bank j = array column j, LDEPTH/RDEPTH words of DK bits, written 32 bits at a time; an
// instruction memory of 64-bit words; a result memory of RESDEPTH tiles of DM x DN accumulators.
//
// Instruction word: [15:0] LHS word offset, [31:16] RHS word offset, [43:32] words to stream,
// [44] shift accumulator left by 1, [45] negate, [46] clear, [47] write the tile when done,
// [63:48] result tile address.
//
// Timing (what `cycles` counts, from `start` to `done`): 1 cycle to decode each instruction, one cycle
// per streamed word, and after an instruction that writes its tile, 3 cycles while the pipeline
// (word read, AND + popcount, accumulate) drains and the tile is written.
module bitserial_dpa #(
  parameter DM = 2, parameter DN = 2, parameter DK = 64, parameter ACCW = 32,
  parameter LDEPTH = 4096, parameter RDEPTH = 4096, parameter IDEPTH = 65536, parameter RESDEPTH = 1024
) (
  input  wire        clk,
  input  wire        rst,
  // memory write ports (harness side)
  input  wire        lhs_we,
  input  wire [31:0] lhs_waddr,   // (bank * LDEPTH + word) * (DK / 32) + slice
  input  wire [31:0] lhs_wdata,
  input  wire        rhs_we,
  input  wire [31:0] rhs_waddr,
  input  wire [31:0] rhs_wdata,
  input  wire        ins_we,
  input  wire [31:0] ins_waddr,
  input  wire [63:0] ins_wdata,
  // run control
  input  wire [31:0] n_ins,
  input  wire        start,
  output reg         done,
  output reg  [31:0] cycles,
  // result read port: (tile * DM + i) * DN + j
  input  wire [31:0] res_raddr,
  output wire [ACCW-1:0] res_rdata
);
  localparam SLICES = DK / 32;
  localparam PCW = $clog2(DK + 1);

  reg [DK-1:0]   lhs_mem [0:DM*LDEPTH-1];
  reg [DK-1:0]   rhs_mem [0:DN*RDEPTH-1];
  reg [63:0]     ins_mem [0:IDEPTH-1];
  reg [ACCW-1:0] res_mem [0:RESDEPTH*DM*DN-1];

  assign res_rdata = res_mem[res_raddr];

  always @(posedge clk) begin
    if (lhs_we) lhs_mem[lhs_waddr / SLICES][(lhs_waddr % SLICES) * 32 +: 32] <= lhs_wdata;
    if (rhs_we) rhs_mem[rhs_waddr / SLICES][(rhs_waddr % SLICES) * 32 +: 32] <= rhs_wdata;
    if (ins_we) ins_mem[ins_waddr] <= ins_wdata;
  end

  // ---- sequencer --------------------------------------------------------------------------------
  localparam S_IDLE = 0, S_DECODE = 1, S_RUN = 2, S_DRAIN = 3, S_DONE = 4;
  reg [2:0]  state;
  reg [31:0] pc;
  reg [63:0] ins;
  reg [11:0] cnt;
  reg [1:0]  drain;

  wire [15:0] ins_lhs = ins[15:0];
  wire [15:0] ins_rhs = ins[31:16];
  wire [11:0] ins_len = ins[43:32];
  wire        ins_wen = ins[47];
  wire        issue = (state == S_RUN);
  wire        first = (cnt == 0);
  wire        last = (cnt == ins_len - 1);

  always @(posedge clk) begin
    if (rst) begin
      state <= S_IDLE; done <= 0; cycles <= 0; pc <= 0; cnt <= 0; drain <= 0;
    end else begin
      if (state != S_IDLE && state != S_DONE) cycles <= cycles + 1;
      case (state)
        S_IDLE: if (start) begin
          pc <= 0; cycles <= 0; done <= 0;
          state <= (n_ins == 0) ? S_DONE : S_DECODE;
        end
        S_DECODE: begin
          ins <= ins_mem[pc];
          cnt <= 0;
          state <= S_RUN;
        end
        S_RUN: begin
          cnt <= cnt + 1;
          if (last) begin
            if (ins_wen || pc + 1 == n_ins) begin
              drain <= 0;
              state <= S_DRAIN;
            end else begin
              pc <= pc + 1;
              state <= S_DECODE;
            end
          end
        end
        S_DRAIN: begin
          drain <= drain + 1;
          if (drain == 2) begin
            pc <= pc + 1;
            state <= (pc + 1 == n_ins) ? S_DONE : S_DECODE;
          end
        end
        S_DONE: done <= 1;
        default: state <= S_IDLE;
      endcase
    end
  end

  // ---- datapath: read -> AND + popcount -> accumulate -> write ------------------------------------
  // control travelling with the data: valid, first word, shift, negate, clear, last word & write, address
  reg        v1, f1, sh1, ng1, cl1, w1;
  reg [15:0] a1;
  reg        v2, f2, sh2, ng2, cl2, w2;
  reg [15:0] a2;
  reg        w3;
  reg [15:0] a3;
  reg [DK-1:0] lq [0:DM-1];
  reg [DK-1:0] rq [0:DN-1];

  integer bi, bj;
  always @(posedge clk) begin
    v1 <= issue && !rst;
    f1 <= first; sh1 <= ins[44]; ng1 <= ins[45]; cl1 <= ins[46]; w1 <= last && ins_wen; a1 <= ins[63:48];
    for (bi = 0; bi < DM; bi = bi + 1) lq[bi] <= lhs_mem[bi * LDEPTH + ins_lhs + cnt];
    for (bj = 0; bj < DN; bj = bj + 1) rq[bj] <= rhs_mem[bj * RDEPTH + ins_rhs + cnt];
    v2 <= v1 && !rst; f2 <= f1; sh2 <= sh1; ng2 <= ng1; cl2 <= cl1; w2 <= w1 && v1; a2 <= a1;
    w3 <= w2 && v2 && !rst; a3 <= a2;
  end

  reg [PCW-1:0]         pcnt [0:DM*DN-1];
  reg signed [ACCW-1:0] acc  [0:DM*DN-1];
  integer u;
  always @(posedge clk) begin
    for (u = 0; u < DM * DN; u = u + 1) begin
      pcnt[u] <= $countones(lq[u / DN] & rq[u % DN]);
      if (v2) acc[u] <= ((f2 && cl2) ? 0 : ((f2 && sh2) ? (acc[u] <<< 1) : acc[u]))
                        + (ng2 ? -$signed({{(ACCW-PCW){1'b0}}, pcnt[u]}) : $signed({{(ACCW-PCW){1'b0}}, pcnt[u]}));
      if (w3) res_mem[a3 * DM * DN + u] <= acc[u];
    end
  end
endmodule
