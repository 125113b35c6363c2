using System.Diagnostics;
using StableDiffusion.IO.Tests.Support;
using StableDiffusion.Runtime;
using Xunit.Abstractions;

namespace StableDiffusion.IO.Tests;

/// <summary>
/// Peak memory while every tensor of a full-size fp16 SD1.5 single file (2.1 GB) goes to a device. Needs
/// SD_BIG_TESTS=1 (it writes the file to the temp folder) and Linux (/proc/self/status, /proc/self/clear_refs).
/// </summary>
[Collection(nameof(PeakMemoryTests))]
public class PeakMemoryTests(ITestOutputHelper output)
{
    private static long StatusKb(string field)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
                return long.Parse(line[(field.Length + 1)..].Trim().Split(' ')[0]);
        throw new InvalidOperationException($"no {field} in /proc/self/status");
    }

    [SkippableTheory]
    [InlineData("safetensors")]
    [InlineData("ckpt")]
    public void LoadingAFullSizeFp16Sd15FileStaysNearOneCopyOfTheWeights(string format)
    {
        Skip.IfNot(Environment.GetEnvironmentVariable("SD_BIG_TESTS") == "1", "set SD_BIG_TESTS=1 to write and load a 2.1 GB file");
        Skip.IfNot(OperatingSystem.IsLinux(), "peak RSS is read from /proc");
        var rows = LayoutFiles.Rows("sd15_single_file_v1-5-pruned-emaonly.tsv", fp16: true).ToList();
        using var dir = new TempDir();
        var path = dir.File($"sd15-fp16.{format}");
        var clock = Stopwatch.StartNew();
        if (format == "ckpt") LayoutFiles.Checkpoint(path, rows);
        else LayoutFiles.Safetensors(path, rows);
        FillTensorBytes(path);
        long fileBytes = new FileInfo(path).Length;
        output.WriteLine($"wrote {path}: {fileBytes:N0} bytes in {clock.Elapsed.TotalSeconds:F1} s");

        using var device = ComputeDevice.OpenIlgpuCpu();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        File.WriteAllText("/proc/self/clear_refs", "5"); // resets VmHWM to the current RSS
        long baseline = StatusKb("VmHWM");
        long allocated = GC.GetTotalAllocatedBytes(precise: true);
        clock.Restart();
        long uploaded = 0;
        using (var model = ModelSource.Open(path))
        {
            foreach (var component in model.Components)
                foreach (var t in component.Tensors)
                {
                    using var tensor = t.Upload(device);
                    uploaded += tensor.ByteLength;
                    device.Pool.Trim(); // one device tensor at a time: what remains is the reader's own footprint
                }
        }
        long peak = StatusKb("VmHWM");
        allocated = GC.GetTotalAllocatedBytes(precise: true) - allocated;
        double gib = 1024.0 * 1024 * 1024;
        output.WriteLine($"{format}: uploaded {uploaded / gib:F2} GiB of {fileBytes / gib:F2} GiB in {clock.Elapsed.TotalSeconds:F1} s; " +
                         $"VmHWM {baseline / 1048576.0:F2} GiB before, {peak / 1048576.0:F2} GiB peak (+{(peak - baseline) / 1048576.0:F2} GiB); " +
                         $"managed allocations {allocated / 1048576.0:F1} MiB");
        // Near one copy: the mapped file's pages, the largest tensor, the runtime; never a second managed copy.
        Assert.True((peak - baseline) * 1024L < fileBytes * 1.15, $"peak grew by {(peak - baseline) / 1048576.0:F2} GiB");
        Assert.True(allocated < 256L << 20, $"{allocated / 1048576.0:F0} MiB of managed allocations");
    }

    // Real bytes (not holes) so every page the loader touches is file data read from disk.
    private static void FillTensorBytes(string path)
    {
        List<(long Offset, long Length)> ranges;
        using (var f = WeightFile.Open(path)) ranges = [.. f.Tensors.Select(t => (t.Offset, t.ByteLength))];
        var pattern = new byte[1 << 20];
        new Random(5).NextBytes(pattern);
        for (int i = 1; i < pattern.Length; i += 2) pattern[i] &= 0x3B; // keep fp16 values finite and small
        using var w = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.None, 1 << 20);
        foreach (var (offset, length) in ranges)
        {
            w.Position = offset;
            for (long done = 0; done < length; done += pattern.Length) w.Write(pattern, 0, (int)Math.Min(pattern.Length, length - done));
        }
    }
}

/// <summary>The peak-memory test measures the whole process, so nothing else may run beside it.</summary>
[CollectionDefinition(nameof(PeakMemoryTests), DisableParallelization = true)]
public class PeakMemoryCollection;
