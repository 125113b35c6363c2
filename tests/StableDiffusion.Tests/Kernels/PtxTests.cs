using StableDiffusion.Kernels;
using Xunit.Abstractions;

namespace StableDiffusion.Tests.Kernels;

/// <summary>
/// The CUDA path without a GPU: every kernel at every tile configuration the CUDA profile launches is compiled to
/// PTX by ILGPU, and, where ptxas is installed (.ci/run installs it and sets SD_REQUIRE_PTXAS=1), assembled for sm_90
/// with no spills and no local-memory stack.
/// </summary>
public class PtxTests(ITestOutputHelper output)
{
    public static TheoryData<string, string> CatalogEntries()
    {
        var data = new TheoryData<string, string>();
        foreach (var e in KernelRuntime.CudaCatalog()) data.Add(e.Kernel, e.Config);
        return data;
    }

    private static KernelEntry Find(string kernel, string config) =>
        KernelRuntime.CudaCatalog().Single(e => e.Kernel == kernel && e.Config == config);

    [Fact]
    public void Catalog_covers_every_kernel_family()
    {
        var kernels = KernelRuntime.CudaCatalog().Select(e => e.Kernel).ToHashSet();
        foreach (var k in new[]
                 {
                     "gemm_tiled", "conv2d_implicit_gemm", "group_norm_stats", "group_norm_finalize", "group_norm_apply",
                     "layer_norm", "softmax", "attention_flash_simt", "activation", "geglu", "binary_broadcast", "scale",
                     "cast", "upsample2x", "concat", "slice", "timestep_embedding", "embedding", "transpose",
                 })
            Assert.Contains(k, kernels);
    }

    [Theory]
    [MemberData(nameof(CatalogEntries))]
    public void Kernel_compiles_to_ptx_for_sm80(string kernel, string config)
    {
        var ptx = PtxTools.CompilePtx(Find(kernel, config));
        Assert.Contains(".target sm_80", ptx);
        Assert.Contains(".entry", ptx);
        Assert.DoesNotContain(".local", ptx); // register tiles stayed in registers
        output.WriteLine($"{kernel} [{config}]: {ptx.Length} bytes of PTX");
    }

    [SkippableTheory]
    [MemberData(nameof(CatalogEntries))]
    public void Kernel_assembles_for_sm90_without_spills(string kernel, string config)
    {
        var ptxas = PtxTools.FindTool("ptxas");
        var cuobjdump = PtxTools.FindTool("cuobjdump");
        bool required = Environment.GetEnvironmentVariable("SD_REQUIRE_PTXAS") == "1";
        if (ptxas is null || cuobjdump is null)
        {
            Assert.False(required, "SD_REQUIRE_PTXAS=1 but ptxas/cuobjdump were not found");
            Skip.If(true, "ptxas/cuobjdump not installed (run .ci/run, or set SD_PTXAS)");
        }
        var dir = Path.Combine(Path.GetTempPath(), "sd-ptx-tests");
        var row = PtxTools.Assemble(Find(kernel, config), ptxas!, cuobjdump, dir);
        output.WriteLine($"{row.Kernel} [{row.Config}]: {row.Registers} registers, {row.SharedBytes} B shared, " +
                         $"{row.StackBytes} B stack, {row.SpillBytes} B spilled, {row.Hmma} HMMA, {row.LoopSassPerHmma:F1} SASS per HMMA in the main loop");
        Assert.Equal(0, row.SpillBytes);
        Assert.Equal(0, row.StackBytes);
        Assert.InRange(row.Registers, 1, 255);
        var entry = Find(kernel, config);
        var tile = TcPlanner.Configs.FirstOrDefault(c => entry.TensorCore && config.Contains(c.Name, StringComparison.Ordinal));
        // Only the planner's > 48 KB configurations opt into more (cuFuncSetAttribute), never above Hopper's 227 KB.
        Assert.InRange(row.SharedBytes, 0, tile?.LargeShared == true ? 227 * 1024 : 48 * 1024);
        if (entry.TensorCore)
        {
            Assert.True(row.Hmma > 0, $"{kernel} is a tensor-core kernel but its SASS has no HMMA");
            // The main loops were 12-22 instructions per HMMA before their address arithmetic was hoisted; 5-10 now.
            Assert.InRange(row.LoopSassPerHmma, 1, 10);
            // The planner's groups per multiprocessor assume at most its register count (128 for 2 groups of 256 threads).
            if (kernel != "attention_flash_mma")
            {
                Assert.NotNull(tile);
                Assert.InRange(row.Registers, 1, tile!.Registers);
            }
        }
        else Assert.Equal(0, row.Hmma);
    }

    [Fact]
    public void Main_loop_measure_takes_the_largest_loop_with_hmma_and_counts_nested_loops_once()
    {
        const string sass = """
                /*0000*/                   MOV R1, c[0x0][0x28] ;
                /*0010*/                   IADD3 R2, R2, 0x1, RZ ;
                /*0020*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
                /*0030*/                   IADD3 R3, R3, 0x1, RZ ;
                /*0040*/              @!P0 BRA 0x30 ;
                /*0050*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
                /*0060*/              @!P1 BRA 0x10 ;
                /*0070*/                   EXIT ;
            """;
        // Outer loop 0x10..0x60: 6 instructions, 2 HMMA.
        Assert.Equal(3.0, PtxTools.LoopSassPerHmma(sass), 6);
        Assert.Equal(0.0, PtxTools.LoopSassPerHmma("/*0000*/ HMMA.16816.F32 R4, R8, R12, R4 ;\n/*0010*/ EXIT ;"), 6);
    }

    [Fact]
    public void Catalog_has_tensor_core_gemm_convolution_and_attention()
    {
        var tc = KernelRuntime.CudaCatalog().Where(e => e.TensorCore).Select(e => e.Kernel).ToHashSet();
        Assert.Contains("gemm_mma", tc);
        Assert.Contains("conv2d_implicit_gemm_mma", tc);
        Assert.Contains("attention_flash_mma", tc);
        var dims = KernelRuntime.CudaCatalog().Where(e => e.Kernel == "attention_flash_mma").Select(e => e.Config).ToList();
        foreach (var d in Attention.TensorCoreHeadDims) Assert.Contains(dims, c => c.Contains($"d{d} "));
    }
}
