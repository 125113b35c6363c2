using StableDiffusion.Runtime;

namespace StableDiffusion.Tests.Runtime;

public class DeviceTests
{
    [Theory]
    [InlineData("auto", null, null)]
    [InlineData("cuda", DeviceKind.Cuda, null)]
    [InlineData("CUDA:1", DeviceKind.Cuda, 1)]
    [InlineData("opencl:0", DeviceKind.OpenCL, 0)]
    [InlineData("cpu", DeviceKind.Cpu, null)]
    [InlineData("ilgpu-cpu", DeviceKind.IlgpuCpu, null)]
    public void Device_requests_parse(string text, DeviceKind? kind, int? index)
    {
        var r = DeviceRequest.Parse(text);
        Assert.Equal(kind, r.Kind);
        Assert.Equal(index, r.Index);
    }

    [Theory]
    [InlineData("tpu")]
    [InlineData("cuda:-1")]
    [InlineData("cuda:x")]
    [InlineData("auto:0")]
    [InlineData("")]
    public void Bad_device_requests_are_usage_errors(string text)
    {
        var e = Assert.Throws<UsageException>(() => DeviceRequest.Parse(text));
        Assert.Contains("--device", e.Message);
        Assert.Equal(2, e.ExitCode);
    }

    [SkippableFact]
    public void Asking_for_cuda_without_a_driver_names_what_was_found()
    {
        Skip.If(NativeLibraries.Probe("cuda") is not null, "this machine has a CUDA driver");
        var e = Assert.Throws<DeviceException>(() => ComputeDevice.Open("cuda"));
        Assert.Contains("CUDA was requested but is not available", e.Message);
        Assert.Contains("libcuda.so.1", e.Message);
        Assert.Contains("Found: cpu", e.Message);
        Assert.Contains("ilgpu-cpu", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [SkippableFact]
    public void Asking_for_opencl_without_a_device_is_an_error_not_a_cpu_fallback()
    {
        Skip.If(DeviceCatalog.Enumerate(out _).Any(d => d.Kind == DeviceKind.OpenCL && d.Usable),
            "this machine has a usable OpenCL device");
        var e = Assert.Throws<DeviceException>(() => ComputeDevice.Open("opencl"));
        Assert.Contains("OpenCL was requested but is not available", e.Message);
    }

    [SkippableFact]
    public void Auto_says_which_device_it_chose()
    {
        Skip.If(NativeLibraries.Probe("cuda") is not null, "this machine has a CUDA driver");
        var log = new StringWriter();
        using var d = ComputeDevice.Open("auto", log);
        Assert.Equal(DeviceKind.Cpu, d.Kind);
        Assert.Contains("auto chose CPU", log.ToString());
        Assert.Contains("no CUDA", log.ToString());
    }

    [Fact]
    public void Catalog_lists_both_cpu_backends_and_notes_about_missing_drivers()
    {
        var all = DeviceCatalog.Enumerate(out var notes);
        Assert.Contains(all, d => d.Kind == DeviceKind.IlgpuCpu && d.Usable && d.Id == "ilgpu-cpu");
        Assert.Contains(all, d => d.Kind == DeviceKind.Cpu && d.Usable && d.Id == "cpu");
        Assert.Contains(notes, n => n.StartsWith("CUDA:"));
        Assert.Contains(notes, n => n.StartsWith("OpenCL:"));
        Assert.All(all.Where(d => !d.Usable), d => Assert.False(string.IsNullOrWhiteSpace(d.Refusal)));
    }
}
