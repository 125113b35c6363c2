using System.Collections.Concurrent;
using System.Globalization;
using System.Reflection;
using System.Runtime.CompilerServices;
using ILGPU;
using ILGPU.Backends;
using ILGPU.Backends.IL;
using ILGPU.Backends.OpenCL;
using ILGPU.Backends.PTX;
using ILGPU.IR;
using ILGPU.IR.Intrinsics;
using ILGPU.Runtime;

namespace StableDiffusion.Runtime;

/// <summary>
/// Runs the inline PTX of the tensor-core kernels on the ILGPU CPU accelerator, so their tiling, fragment layouts,
/// swizzles, masks and epilogues are tested against the oracle without a GPU.
/// <para>
/// A kernel writes each asm site twice: <c>if (CudaAsm.IsSupported) CudaAsm.Emit(S, x...); else
/// PtxEmulator.Exec(S, x...);</c>. <see cref="Exec"/> is an ILGPU intrinsic: the compiler sees an empty stub (so the
/// .NET body below never has to be compilable device code), while the CPU accelerator, which runs the kernel's .NET
/// code, runs the real body. The 32 lanes of a warp meet at a warp barrier, lane 0 interprets the snippet for all of
/// them in lockstep (so ldmatrix, mma.sync and shfl see every lane's registers), and they meet again.
/// </para>
/// <para>
/// Only the PTX subset our kernels use is understood; anything else throws with the statement named. Semantics follow
/// the PTX ISA: fragment layouts of <c>mma.m16n8k16</c> and <c>ldmatrix</c> (with <c>.trans</c>), <c>cp.async</c>
/// copies that land only when a <c>cp.async.wait_group</c> retires their group (the latest moment the ISA allows, so a
/// read before the wait sees stale data), <c>ex2.approx</c> as an exact power of two. Dynamic shared memory is
/// addressed by offset (<c>__dyn_shared_alloca</c> is 0); kernels hand its view over once with
/// <see cref="BindShared"/>. Global addresses are the host pointers of CPU-accelerator buffers.
/// </para>
/// </summary>
public static class PtxEmulator
{
    /// <summary>Interprets <paramref name="ptx"/> for this lane's warp; %0..%7 are the operands' raw bits.</summary>
    [IntrinsicImplementation]
    public static void Exec(string ptx, ulong a0 = 0, ulong a1 = 0, ulong a2 = 0, ulong a3 = 0, ulong a4 = 0,
        ulong a5 = 0, ulong a6 = 0, ulong a7 = 0)
    {
        var w = CurrentWarp();
        int lane = Warp.LaneIdx;
        var ops = w.Operands[lane];
        ops[0] = a0; ops[1] = a1; ops[2] = a2; ops[3] = a3; ops[4] = a4; ops[5] = a5; ops[6] = a6; ops[7] = a7;
        w.Shared[lane] = shared;
        w.SharedBytes[lane] = sharedBytes;
        Warp.Barrier();
        if (lane == 0)
        {
            w.Error = null;
            try { w.Run(Parse(ptx)); }
            catch (Exception e) { w.Error = e; }
        }
        Warp.Barrier();
        if (lane == 0 && w.Error is { } err) Interlocked.CompareExchange(ref failure, err, null);
    }

    private static Exception? failure;

    /// <summary>
    /// The first emulation failure since the last call, cleared. A failure is recorded instead of thrown: an exception
    /// on a simulated GPU thread would end the process; the kernel runtime checks this after each CPU-accelerator launch.
    /// </summary>
    public static Exception? TakeFailure() => Interlocked.Exchange(ref failure, null);

    /// <summary>Tells the emulator where this group's dynamic shared memory is (a no-op stub in compiled code).</summary>
    [IntrinsicImplementation]
    public static void BindShared(ArrayView<byte> view)
    {
        shared = view.Length == 0 ? 0 : view.LoadEffectiveAddressAsPtr().ToInt64();
        sharedBytes = view.Length;
    }

    [ThreadStatic] private static long shared;
    [ThreadStatic] private static long sharedBytes;

    private static void ExecStub(string ptx, ulong a0, ulong a1, ulong a2, ulong a3, ulong a4, ulong a5, ulong a6, ulong a7) { }

    private static void BindStub(ArrayView<byte> view) { }

    /// <summary>Registers the stubs for every backend (the IL one is what the CPU accelerator's compiler sees).</summary>
    public static Context.Builder Register(Context.Builder builder)
    {
        var manager = builder.GetIntrinsicManager();
        foreach (var (method, stub) in new[] { (nameof(Exec), nameof(ExecStub)), (nameof(BindShared), nameof(BindStub)) })
        {
            var m = typeof(PtxEmulator).GetMethod(method)!;
            manager.RegisterMethod(m, new StubIntrinsic(BackendType.IL, stub));
            manager.RegisterMethod(m, new PTXIntrinsic(typeof(PtxEmulator), stub, IntrinsicImplementationMode.Redirect));
            manager.RegisterMethod(m, new CLIntrinsic(typeof(PtxEmulator), stub, IntrinsicImplementationMode.Redirect));
        }
        return builder;
    }

    private sealed class StubIntrinsic(BackendType backend, string stub)
        : IntrinsicImplementation(backend, typeof(PtxEmulator), stub, IntrinsicImplementationMode.Redirect)
    {
        protected override bool CanHandleBackend(Backend b) => b is ILBackend;
    }

    // ---- warp state -------------------------------------------------------------------------------------------

    // The simulator's per-thread warp context (internal to ILGPU) identifies the warp a lane belongs to.
    private static readonly FieldInfo WarpContextField =
        Type.GetType("ILGPU.Runtime.CPU.CPURuntimeWarpContext, ILGPU", throwOnError: true)!
            .GetField("currentContext", BindingFlags.NonPublic | BindingFlags.Static)!;

    private static readonly ConditionalWeakTable<object, WarpState> Warps = new();

    private static WarpState CurrentWarp()
    {
        var ctx = WarpContextField.GetValue(null)
                  ?? throw new InvalidOperationException("PtxEmulator.Exec runs only inside a kernel on the ILGPU CPU accelerator");
        return Warps.GetValue(ctx, _ => new WarpState());
    }

    private static readonly ConcurrentDictionary<string, Stmt[]> Programs = new();
    private static readonly Dictionary<string, int> RegisterIds = new();
    private static int registerCount;

    private static int RegId(string name)
    {
        lock (RegisterIds)
        {
            if (!RegisterIds.TryGetValue(name, out int id)) RegisterIds[name] = id = registerCount++;
            return id;
        }
    }

    private static Stmt[] Parse(string ptx) => Programs.GetOrAdd(ptx, Compile);

    private enum Kind { Reg, Operand, Imm, Vec, Mem }

    private sealed record Opnd(Kind Kind, int Reg = -1, ulong Imm = 0, int Index = -1, Opnd[]? Items = null, long Offset = 0);

    private sealed record Stmt(string Text, string Op, string[] Mods, Opnd[] Args, int[]? Declared = null);

    private static Stmt[] Compile(string ptx)
    {
        var list = new List<Stmt>();
        foreach (var raw in ptx.Split(';'))
        {
            var s = raw.Trim();
            if (s.Length == 0) continue;
            if (s.StartsWith(".reg", StringComparison.Ordinal))
            {
                var toks = s.Split([' ', ','], StringSplitOptions.RemoveEmptyEntries);
                var ids = new List<int>();
                foreach (var t in toks.Skip(2))
                {
                    int lt = t.IndexOf('<');
                    if (lt < 0) ids.Add(RegId(t));
                    else
                    {
                        string stem = t[..lt];
                        int n = int.Parse(t[(lt + 1)..^1], CultureInfo.InvariantCulture);
                        for (int i = 0; i < n; i++) ids.Add(RegId(stem + i));
                    }
                }
                list.Add(new Stmt(s, ".reg", [], [], [.. ids]));
                continue;
            }
            int sp = s.IndexOfAny([' ', '\t']);
            string opcode = sp < 0 ? s : s[..sp];
            string rest = sp < 0 ? "" : s[(sp + 1)..];
            var parts = opcode.Split('.');
            list.Add(new Stmt(s, parts[0], parts[1..], [.. SplitTop(rest).Select(ParseOperand)]));
        }
        return [.. list];
    }

    private static IEnumerable<string> SplitTop(string s)
    {
        int depth = 0, start = 0;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (c is '{' or '[') depth++;
            else if (c is '}' or ']') depth--;
            else if (c == ',' && depth == 0)
            {
                yield return s[start..i].Trim();
                start = i + 1;
            }
        }
        if (s.Trim().Length > 0) yield return s[start..].Trim();
    }

    private static Opnd ParseOperand(string t)
    {
        if (t.StartsWith('{'))
            return new Opnd(Kind.Vec, Items: [.. SplitTop(t[1..^1]).Select(ParseOperand)]);
        if (t.StartsWith('['))
        {
            var inner = t[1..^1].Trim();
            int plus = inner.IndexOf('+');
            var baseOp = ParseOperand(plus < 0 ? inner : inner[..plus].Trim());
            long off = plus < 0 ? 0 : long.Parse(inner[(plus + 1)..].Trim(), CultureInfo.InvariantCulture);
            return new Opnd(Kind.Mem, Items: [baseOp], Offset: off);
        }
        if (t.StartsWith('%')) return new Opnd(Kind.Operand, Index: int.Parse(t[1..], CultureInfo.InvariantCulture));
        if (t == "__dyn_shared_alloca") return new Opnd(Kind.Imm, Imm: 0);
        if (t.StartsWith("0f", StringComparison.Ordinal) && t.Length == 10)
            return new Opnd(Kind.Imm, Imm: uint.Parse(t[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture));
        if (t.StartsWith("0x", StringComparison.Ordinal))
            return new Opnd(Kind.Imm, Imm: ulong.Parse(t[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture));
        if (t.Length > 0 && (char.IsDigit(t[0]) || t[0] == '-'))
            return new Opnd(Kind.Imm, Imm: (ulong)long.Parse(t, CultureInfo.InvariantCulture));
        return new Opnd(Kind.Reg, Reg: RegId(t));
    }

    private sealed class WarpState
    {
        public readonly ulong[][] Operands = Enumerable.Range(0, 32).Select(_ => new ulong[8]).ToArray();
        public readonly long[] Shared = new long[32];
        public readonly long[] SharedBytes = new long[32];
        public ulong[][] Regs = Enumerable.Range(0, 32).Select(_ => new ulong[256]).ToArray();
        public readonly List<List<(long Dst, long Src, int Bytes)>>[] Pending =
            Enumerable.Range(0, 32).Select(_ => new List<List<(long, long, int)>> { new() }).ToArray();
        public Exception? Error;

        private ulong Get(int lane, Opnd o) => o.Kind switch
        {
            Kind.Reg => Regs[lane][o.Reg],
            Kind.Operand => Operands[lane][o.Index],
            Kind.Imm => o.Imm,
            _ => throw new InvalidOperationException("a vector or address operand where a value was expected"),
        };

        private void Set(int lane, Opnd o, ulong v)
        {
            if (o.Kind != Kind.Reg) throw new InvalidOperationException("a destination that is not a register");
            Regs[lane][o.Reg] = v;
        }

        private static float F(ulong v) => BitConverter.Int32BitsToSingle((int)(uint)v);

        private static ulong Bits(float f) => (uint)BitConverter.SingleToInt32Bits(f);

        private static float H(uint bits) => (float)BitConverter.UInt16BitsToHalf((ushort)bits);

        private static uint HBits(float f) => BitConverter.HalfToUInt16Bits((System.Half)f);

        private long Address(int lane, Opnd mem) => (long)Get(lane, mem.Items![0]) + mem.Offset;

        private unsafe byte* SharedPtr(int lane, long offset, int bytes)
        {
            if (offset < 0 || offset + bytes > SharedBytes[lane])
                throw new InvalidOperationException($"shared access of {bytes} bytes at offset {offset} outside the {SharedBytes[lane]} bytes bound");
            return (byte*)Shared[lane] + offset;
        }

        public void Run(Stmt[] program)
        {
            int maxReg = Volatile.Read(ref registerCount);
            if (Regs[0].Length < maxReg)
                Regs = Regs.Select(r => { var n = new ulong[maxReg * 2]; r.CopyTo(n, 0); return n; }).ToArray();
            foreach (var st in program)
            {
                try { Step(st); }
                catch (Exception e) { throw new InvalidOperationException($"`{st.Text}`: {e.Message}", e); }
            }
        }

        private unsafe void Step(Stmt st)
        {
            var a = st.Args;
            string type = st.Mods.Length > 0 ? st.Mods[^1] : "";
            switch (st.Op)
            {
                case ".reg":
                    foreach (var id in st.Declared!) for (int l = 0; l < 32; l++) Regs[l][id] = 0;
                    return;
                case "mov":
                    for (int l = 0; l < 32; l++) Set(l, a[0], Get(l, a[1]));
                    return;
                case "add" or "sub" or "mul" or "max" or "min" when type == "f32":
                    for (int l = 0; l < 32; l++)
                    {
                        float x = F(Get(l, a[1])), y = F(Get(l, a[2]));
                        float r = st.Op switch { "add" => x + y, "sub" => x - y, "mul" => x * y, "max" => MathF.Max(x, y), _ => MathF.Min(x, y) };
                        Set(l, a[0], Bits(r));
                    }
                    return;
                case "add" or "sub" when type is "u32" or "s32" or "b32":
                    for (int l = 0; l < 32; l++)
                    {
                        uint x = (uint)Get(l, a[1]), y = (uint)Get(l, a[2]);
                        Set(l, a[0], st.Op == "add" ? x + y : x - y);
                    }
                    return;
                case "add" when type is "u64" or "s64":
                    for (int l = 0; l < 32; l++) Set(l, a[0], Get(l, a[1]) + Get(l, a[2]));
                    return;
                case "fma" when type == "f32":
                    for (int l = 0; l < 32; l++)
                        Set(l, a[0], Bits(F(Get(l, a[1])) * F(Get(l, a[2])) + F(Get(l, a[3]))));
                    return;
                case "ex2" when type == "f32":
                    for (int l = 0; l < 32; l++) Set(l, a[0], Bits(MathF.Pow(2f, F(Get(l, a[1])))));
                    return;
                case "neg" when type == "f32":
                    for (int l = 0; l < 32; l++) Set(l, a[0], Bits(-F(Get(l, a[1]))));
                    return;
                case "rcp" when type == "f32":
                    for (int l = 0; l < 32; l++) Set(l, a[0], Bits(1f / F(Get(l, a[1]))));
                    return;
                case "cvt" when st.Mods is ["rn", "f16x2", "f32"]:
                    // d = { cvt(a) in the upper half, cvt(b) in the lower half }
                    for (int l = 0; l < 32; l++)
                        Set(l, a[0], (HBits(F(Get(l, a[1]))) << 16) | HBits(F(Get(l, a[2]))));
                    return;
                case "setp" when type == "s32":
                    for (int l = 0; l < 32; l++)
                    {
                        int x = (int)(uint)Get(l, a[1]), y = (int)(uint)Get(l, a[2]);
                        bool r = st.Mods[0] switch
                        {
                            "lt" => x < y, "le" => x <= y, "gt" => x > y, "ge" => x >= y, "eq" => x == y, "ne" => x != y,
                            _ => throw new InvalidOperationException($"comparison {st.Mods[0]} is not emulated"),
                        };
                        Set(l, a[0], r ? 1UL : 0UL);
                    }
                    return;
                case "selp":
                    for (int l = 0; l < 32; l++) Set(l, a[0], Get(l, a[3]) != 0 ? Get(l, a[1]) : Get(l, a[2]));
                    return;
                case "shfl" when st.Mods is ["sync", "bfly", "b32"]:
                {
                    var src = new ulong[32];
                    for (int l = 0; l < 32; l++) src[l] = Get(l, a[1]);
                    for (int l = 0; l < 32; l++) Set(l, a[0], src[l ^ (int)Get(l, a[2])]);
                    return;
                }
                case "st" when st.Mods[0] == "shared":
                {
                    int width = type is "f32" or "b32" or "u32" ? 4 : throw new InvalidOperationException($"st type {type}");
                    var vals = a[1].Kind == Kind.Vec ? a[1].Items! : [a[1]];
                    for (int l = 0; l < 32; l++)
                    {
                        long addr = Address(l, a[0]);
                        var p = SharedPtr(l, addr, width * vals.Length);
                        for (int i = 0; i < vals.Length; i++) *(uint*)(p + 4 * i) = (uint)Get(l, vals[i]);
                    }
                    return;
                }
                case "ld" when st.Mods[0] == "shared":
                {
                    var dsts = a[0].Kind == Kind.Vec ? a[0].Items! : [a[0]];
                    for (int l = 0; l < 32; l++)
                    {
                        var p = SharedPtr(l, Address(l, a[1]), 4 * dsts.Length);
                        for (int i = 0; i < dsts.Length; i++) Set(l, dsts[i], *(uint*)(p + 4 * i));
                    }
                    return;
                }
                case "cp" when st.Mods.Length > 0 && st.Mods[0] == "async":
                    CpAsync(st);
                    return;
                case "ldmatrix":
                    LdMatrix(st);
                    return;
                case "mma" when st.Text.StartsWith("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", StringComparison.Ordinal):
                    Mma(a);
                    return;
                default:
                    throw new InvalidOperationException("instruction not emulated");
            }
        }

        private unsafe void CpAsync(Stmt st)
        {
            string kind = st.Mods[1];
            if (kind == "commit_group")
            {
                for (int l = 0; l < 32; l++) Pending[l].Add(new());
                return;
            }
            if (kind == "wait_group" || kind == "wait_all")
            {
                int keep = kind == "wait_all" ? 0 : (int)st.Args[0].Imm;
                for (int l = 0; l < 32; l++)
                {
                    // Groups are committed in order; the last list is the open (uncommitted) one.
                    var groups = Pending[l];
                    int committed = groups.Count - 1;
                    int retire = Math.Max(0, committed - keep);
                    for (int g = 0; g < retire; g++)
                        foreach (var (dst, src, bytes) in groups[g])
                        {
                            var p = SharedPtr(l, dst, 16);
                            for (int i = 0; i < 16; i++) p[i] = i < bytes ? ((byte*)src)[i] : (byte)0;
                        }
                    groups.RemoveRange(0, retire);
                }
                return;
            }
            if (st.Mods is not ["async", "cg", "shared", "global"] && st.Mods is not ["async", "ca", "shared", "global"])
                throw new InvalidOperationException("cp.async form not emulated");
            var a = st.Args;
            if ((long)a[2].Imm != 16) throw new InvalidOperationException("only 16-byte cp.async is emulated");
            for (int l = 0; l < 32; l++)
            {
                long dst = Address(l, a[0]);
                long src = Address(l, a[1]);
                int bytes = a.Length > 3 ? (int)(uint)Get(l, a[3]) : 16;
                if (bytes > 0 && (src & 15) != 0) throw new InvalidOperationException($"cp.async source {src:x} is not 16-byte aligned");
                if ((dst & 15) != 0) throw new InvalidOperationException($"cp.async destination {dst} is not 16-byte aligned");
                SharedPtr(l, dst, 16);
                Pending[l][^1].Add((dst, src, bytes));
            }
        }

        private unsafe void LdMatrix(Stmt st)
        {
            // ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16 {d...}, [addr]
            int num = st.Mods.Contains("x4") ? 4 : st.Mods.Contains("x2") ? 2 : 1;
            bool trans = st.Mods.Contains("trans");
            var dsts = st.Args[0].Items!;
            if (dsts.Length != num) throw new InvalidOperationException("register count does not match .x");
            var m = new ushort[num, 8, 8];
            for (int i = 0; i < num; i++)
                for (int r = 0; r < 8; r++)
                {
                    int lane = 8 * i + r;
                    long addr = Address(lane, st.Args[1]);
                    if ((addr & 15) != 0) throw new InvalidOperationException($"ldmatrix row address {addr} is not 16-byte aligned");
                    var p = (ushort*)SharedPtr(lane, addr, 16);
                    for (int c = 0; c < 8; c++) m[i, r, c] = p[c];
                }
            for (int l = 0; l < 32; l++)
            {
                int row = l >> 2, col = 2 * (l & 3);
                for (int i = 0; i < num; i++)
                {
                    uint lo = trans ? m[i, col, row] : m[i, row, col];
                    uint hi = trans ? m[i, col + 1, row] : m[i, row, col + 1];
                    Set(l, dsts[i], lo | (hi << 16));
                }
            }
        }

        private void Mma(Opnd[] a)
        {
            var d = a[0].Items!;
            var fa = a[1].Items!;
            var fb = a[2].Items!;
            var fc = a[3].Items!;
            var A = new float[16, 16];
            var B = new float[16, 8];
            var C = new float[16, 8];
            for (int l = 0; l < 32; l++)
            {
                int g = l >> 2, t = l & 3;
                uint a0 = (uint)Get(l, fa[0]), a1 = (uint)Get(l, fa[1]), a2 = (uint)Get(l, fa[2]), a3 = (uint)Get(l, fa[3]);
                A[g, 2 * t] = H(a0 & 0xffff); A[g, 2 * t + 1] = H(a0 >> 16);
                A[g + 8, 2 * t] = H(a1 & 0xffff); A[g + 8, 2 * t + 1] = H(a1 >> 16);
                A[g, 2 * t + 8] = H(a2 & 0xffff); A[g, 2 * t + 9] = H(a2 >> 16);
                A[g + 8, 2 * t + 8] = H(a3 & 0xffff); A[g + 8, 2 * t + 9] = H(a3 >> 16);
                uint b0 = (uint)Get(l, fb[0]), b1 = (uint)Get(l, fb[1]);
                B[2 * t, g] = H(b0 & 0xffff); B[2 * t + 1, g] = H(b0 >> 16);
                B[2 * t + 8, g] = H(b1 & 0xffff); B[2 * t + 9, g] = H(b1 >> 16);
                C[g, 2 * t] = F(Get(l, fc[0])); C[g, 2 * t + 1] = F(Get(l, fc[1]));
                C[g + 8, 2 * t] = F(Get(l, fc[2])); C[g + 8, 2 * t + 1] = F(Get(l, fc[3]));
            }
            var D = new float[16, 8];
            for (int i = 0; i < 16; i++)
                for (int j = 0; j < 8; j++)
                {
                    float s = C[i, j];
                    for (int k = 0; k < 16; k++) s += A[i, k] * B[k, j];
                    D[i, j] = s;
                }
            for (int l = 0; l < 32; l++)
            {
                int g = l >> 2, t = l & 3;
                Set(l, d[0], Bits(D[g, 2 * t])); Set(l, d[1], Bits(D[g, 2 * t + 1]));
                Set(l, d[2], Bits(D[g + 8, 2 * t])); Set(l, d[3], Bits(D[g + 8, 2 * t + 1]));
            }
        }
    }
}
