using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using StableDiffusion.Kernels;

namespace StableDiffusion.Bench;

/// <summary>Throughput columns computed from each case's work and the measured median.</summary>
public sealed class WorkColumn(WorkColumn.Kind kind) : IColumn
{
    public enum Kind
    {
        GFlops,
        GBps,
        PercentFma,
        PercentBandwidth,
        Kernel,
    }

    public string Id => "sd-" + kind;
    public string ColumnName => kind switch
    {
        Kind.GFlops => "GFLOP/s",
        Kind.GBps => "GB/s",
        Kind.PercentFma => "% fp32 FMA",
        Kind.PercentBandwidth => "% bandwidth",
        _ => "kernel",
    };
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => (int)kind;
    public bool IsNumeric => kind != Kind.Kernel;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => kind switch
    {
        Kind.GFlops => "achieved GFLOP/s (median)",
        Kind.GBps => "achieved GB/s over the minimum traffic (median)",
        Kind.PercentFma => "percent of the measured fp32 FMA ceiling",
        Kind.PercentBandwidth => "percent of the measured copy bandwidth",
        _ => "kernel variant the launcher chose",
    };

    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public bool IsAvailable(Summary summary) => true;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var c = (BenchCase)benchmarkCase.Parameters["Case"];
        if (kind == Kind.Kernel) return Suite.Kernels.GetValueOrDefault(c.Describe(), "");
        var stats = summary[benchmarkCase]?.ResultStatistics;
        if (stats is null) return "-";
        double ms = stats.Median / 1e6;
        double gflops = c.Flops / (ms * 1e6), gbps = c.Bytes / (ms * 1e6);
        var ceil = Suite.Ceilings;
        return kind switch
        {
            Kind.GFlops => gflops.ToString("F1"),
            Kind.GBps => gbps.ToString("F1"),
            Kind.PercentFma => ceil is null ? "-" : (100 * gflops / ceil.Fp32GFlops).ToString("F1"),
            _ => ceil is null ? "-" : (100 * gbps / ceil.BandwidthGBps).ToString("F1"),
        };
    }
}
