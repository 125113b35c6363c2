namespace StableDiffusion.Tests.Kernels;

/// <summary>The generated PTX of the tensor-core attention in the tree is what its generator writes.</summary>
public class AttentionTcPtxTests
{
    [Fact]
    public void Generated_file_is_current()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "StableDiffusion.Kernels.sln"))) dir = dir.Parent;
        Assert.NotNull(dir);
        var path = Path.Combine(dir!.FullName, "kernels", "AttentionTensorCore.Ptx.g.cs");
        var want = AttentionTcPtxGenerator.Generate();
        if (Environment.GetEnvironmentVariable("SD_REGENERATE") == "1") File.WriteAllText(path, want);
        Assert.True(File.Exists(path), $"{path} is missing; run with SD_REGENERATE=1");
        Assert.True(File.ReadAllText(path).Replace("\r\n", "\n") == want,
            $"{path} differs from what AttentionTcPtxGenerator writes; run `SD_REGENERATE=1 dotnet test tests/StableDiffusion.Tests -c Release --filter AttentionTcPtx`");
    }
}
