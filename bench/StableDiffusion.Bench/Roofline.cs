using System.Text.Json;
using ScottPlot;
using StableDiffusion;

namespace StableDiffusion.Bench;

/// <summary>A log-log roofline: the measured compute and bandwidth ceilings and one point per benchmark case.</summary>
public static class Roofline
{
    public static string Slug(string device) =>
        string.Concat(device.ToLowerInvariant().Select(ch => char.IsLetterOrDigit(ch) ? ch : '-')).Trim('-').Replace("--", "-");

    public static void Plot(string resultsJson, string png)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(resultsJson));
        var root = doc.RootElement;
        string device = root.GetProperty("device").GetString() ?? "?";
        double peak = 0, bw = 0;
        if (root.TryGetProperty("ceilings", out var ce) && ce.ValueKind == JsonValueKind.Object)
        {
            peak = ce.GetProperty("fp32_fma_gflops").GetDouble();
            bw = ce.GetProperty("bandwidth_gbps").GetDouble();
        }
        var plot = new Plot();
        plot.Title($"Roofline: {device}");
        plot.XLabel("arithmetic intensity (FLOP / byte), log10");
        plot.YLabel("GFLOP/s, log10");
        // Rows are flat (this program's results.json) or carry the case nested (`sd bench --json`).
        var points = root.GetProperty("results").EnumerateArray().Select(r =>
        {
            var c = r.TryGetProperty("case", out var nested) ? nested : r;
            return (
                Label: $"{c.GetProperty("op").GetString()} {c.GetProperty("dtype").GetString()}",
                Intensity: c.GetProperty("flops").GetDouble() / c.GetProperty("bytes").GetDouble(),
                GFlops: r.GetProperty("gflops").GetDouble());
        }).Where(p => p.GFlops > 0).ToList();
        if (points.Count == 0) throw new UsageException($"{resultsJson}: no results to plot");
        double xmin = Math.Log10(points.Min(p => p.Intensity)) - 1, xmax = Math.Log10(points.Max(p => p.Intensity)) + 1;
        if (peak > 0 && bw > 0)
        {
            // min(peak, bandwidth * intensity), drawn in log space.
            var xs = Enumerable.Range(0, 200).Select(i => xmin + (xmax - xmin) * i / 199.0).ToArray();
            var ys = xs.Select(x => Math.Log10(Math.Min(peak, bw * Math.Pow(10, x)))).ToArray();
            var line = plot.Add.ScatterLine(xs, ys);
            line.LegendText = $"measured ceilings: {peak:G3} GFLOP/s fp32 FMA, {bw:G3} GB/s copy";
            line.LineWidth = 2;
        }
        foreach (var group in points.GroupBy(p => p.Label))
        {
            var s = plot.Add.ScatterPoints(group.Select(p => Math.Log10(p.Intensity)).ToArray(),
                group.Select(p => Math.Log10(p.GFlops)).ToArray());
            s.LegendText = group.Key;
            s.MarkerSize = 8;
        }
        plot.ShowLegend(Alignment.LowerRight);
        plot.SavePng(png, 1000, 650);
    }
}
