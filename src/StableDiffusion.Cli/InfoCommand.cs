using System.Text.Json;
using StableDiffusion.IO;

namespace StableDiffusion.Cli;

/// <summary>
/// <c>sd info</c>: what a model is (format, family, dtypes) and what it holds per component. The JSON form always
/// lists every tensor; the text form does with <c>--tensors</c>. A hub id is fetched into the hub cache first.
/// </summary>
internal static class InfoCommand
{
    /// <param name="args">the arguments after <c>info</c></param>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        string? target = null, revision = null, variant = null;
        bool json = false, listTensors = false;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--json": json = true; break;
                case "--tensors": listTensors = true; break;
                case "--revision": revision = Value(args, ref i); break;
                case "--variant": variant = Value(args, ref i); break;
                case var a when a.StartsWith('-'): throw new UsageException($"unexpected option '{a}' for 'sd info'; run 'sd --help'");
                case var a when target is null: target = a; break;
                case var a: throw new UsageException($"unexpected argument '{a}' for 'sd info' (one model at a time)");
            }
        }
        if (target is null) throw new UsageException("'sd info' needs a model: a file, a diffusers folder or a hub id (org/name)");

        var path = ModelArgument.Resolve(target, revision, variant, stderr);
        using var model = ModelSource.Open(path, variant);
        if (json) WriteJson(model, stdout);
        else WriteText(model, target, listTensors, stdout);
        return 0;
    }

    private static string Value(string[] args, ref int i)
    {
        if (i + 1 >= args.Length || args[i + 1].StartsWith("--", StringComparison.Ordinal))
            throw new UsageException($"option {args[i]} needs a value");
        return args[++i];
    }

    /// <summary>Every stored tensor: single files under their own names, diffusers files as component/name.</summary>
    private static IEnumerable<(string Name, TensorInfo Tensor)> StoredTensors(ModelSource m)
    {
        foreach (var f in m.Files)
        {
            var prefix = m.Format == "diffusers" ? Path.GetFileName(Path.GetDirectoryName(f.Path)) + "/" : "";
            foreach (var t in f.Tensors) yield return (prefix + t.Name, t);
        }
    }

    private static void WriteJson(ModelSource m, TextWriter stdout)
    {
        var doc = new Dictionary<string, object>
        {
            ["format"] = m.Format,
            ["family"] = m.Family.Name(),
            ["components"] = m.Components.ToDictionary(c => c.Name, c => new { tensors = c.TensorCount, parameters = c.ParameterCount }),
            ["tensors"] = StoredTensors(m).Select(t => new { name = t.Name, dtype = t.Tensor.DType.Name(), shape = t.Tensor.Shape }),
        };
        stdout.WriteLine(JsonSerializer.Serialize(doc, new JsonSerializerOptions { WriteIndented = true }));
    }

    private static void WriteText(ModelSource m, string target, bool listTensors, TextWriter stdout)
    {
        var all = StoredTensors(m).ToList();
        string family = m.Family switch
        {
            ModelFamily.Unknown => "unknown (not a Stable Diffusion 1.x/2.x/XL model sd recognises)",
            var f => f.Name(),
        };
        stdout.WriteLine($"model:   {target}{(target == m.Path ? "" : $" ({m.Path})")}");
        stdout.WriteLine($"format:  {m.Format}");
        stdout.WriteLine($"family:  {family}");
        stdout.WriteLine("dtypes:  " + string.Join(", ", all.GroupBy(t => t.Tensor.DType).OrderBy(g => g.Key).Select(g => $"{g.Key.Name()} ({g.Count()} tensor{(g.Count() == 1 ? "" : "s")})")));
        stdout.WriteLine();
        stdout.WriteLine($"{"component",-16}{"tensors",8}{"parameters",16}");
        foreach (var c in m.Components)
            stdout.WriteLine($"{c.Name,-16}{c.TensorCount,8}{c.ParameterCount,16:N0}");
        if (m.Ignored.Count > 0)
            stdout.WriteLine($"not counted: {m.Ignored.Count} non-weight tensor(s) (position ids, DDPM buffers, EMA bookkeeping, unused OpenCLIP parts)");
        if (m.Unrecognised.Count > 0)
            stdout.WriteLine($"not recognised: {m.Unrecognised.Count} tensor(s), e.g. '{m.Unrecognised[0].Tensor.Name}'");
        if (!listTensors) return;
        stdout.WriteLine();
        int width = all.Max(t => t.Name.Length);
        foreach (var (name, t) in all)
            stdout.WriteLine($"{name.PadRight(width)}  {t.DType.Name(),-4}  {t.ShapeString}");
    }
}
