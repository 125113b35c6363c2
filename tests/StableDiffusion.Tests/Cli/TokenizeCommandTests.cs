namespace StableDiffusion.Tests.Cli;

public class TokenizeCommandTests
{
    private static (int Code, string Out, string Err) Sd(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = StableDiffusion.Cli.Cli.Run(args, o, e);
        return (code, o.ToString(), e.ToString());
    }

    /// <summary>A folder of ../shared/reference/configs; skips the test where the reference is absent.</summary>
    private static string Reference(params string[] parts)
    {
        string? root = null;
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null && root is null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "StableDiffusion.Kernels.sln")))
                root = Path.GetFullPath(Path.Combine(d.FullName, "..", "shared", "reference"));
        Skip.If(root is null || !Directory.Exists(root), "../shared/reference is not present beside the repository");
        return Path.Combine([root!, .. parts]);
    }

    private static string Temp()
    {
        var dir = Path.Combine(Path.GetTempPath(), "sd-tokenize-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(dir);
        return dir;
    }

    [SkippableFact]
    public void Prints_the_ids_as_a_json_array_with_start_and_end_and_no_padding()
    {
        var (code, stdout, stderr) = Sd("tokenize", "--tokenizer", Reference("configs", "sd15", "tokenizer"), "a photo of a cat");
        Assert.Equal((0, "[49406,320,1125,539,320,2368,49407]" + Environment.NewLine, ""), (code, stdout, stderr));
    }

    [SkippableFact]
    public void Takes_the_tokenizer_of_a_model_folder_and_a_vocabulary_from_elsewhere()
    {
        var dir = Temp();
        try
        {
            // A model folder whose tokenizer carries only its json files, as the SD2 reference copy does.
            Directory.CreateDirectory(Path.Combine(dir, "tokenizer"));
            foreach (var f in Directory.GetFiles(Reference("configs", "sd21-base", "tokenizer")))
                File.Copy(f, Path.Combine(dir, "tokenizer", Path.GetFileName(f)));
            var (code, stdout, stderr) = Sd("tokenize", "--model", dir, "--vocab", Reference("clip", "bpe_simple_vocab_16e6.txt.gz"), "An astronaut riding a horse");
            Assert.Equal((0, "[49406,550,18376,6765,320,4558,49407]" + Environment.NewLine, ""), (code, stdout, stderr));

            // Without --vocab, CLIP's built-in vocabulary stands in.
            (code, stdout, stderr) = Sd("tokenize", "--model", dir, "An astronaut riding a horse");
            Assert.Equal((0, "[49406,550,18376,6765,320,4558,49407]" + Environment.NewLine, ""), (code, stdout, stderr));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void A_text_longer_than_77_tokens_prints_every_id()
    {
        var text = string.Join(' ', Enumerable.Repeat("cat", 80));
        var (code, stdout, stderr) = Sd("tokenize", "--", text);
        Assert.Equal((0, ""), (code, stderr));
        Assert.Equal(82, stdout.Split(',').Length);
    }

    [Fact]
    public void Chunks_print_ids_and_weights_per_chunk()
    {
        var (code, stdout, stderr) = Sd("tokenize", "--chunks", "a (cat:1.5) BREAK [dog]");
        Assert.Equal((0, ""), (code, stderr));
        using var doc = System.Text.Json.JsonDocument.Parse(stdout);
        var chunks = doc.RootElement.GetProperty("chunks").EnumerateArray().ToList();
        Assert.Equal(2, chunks.Count);
        var ids = chunks.Select(c => c.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray()).ToList();
        var weights = chunks.Select(c => c.GetProperty("weights").EnumerateArray().Select(e => e.GetSingle()).ToArray()).ToList();
        Assert.All(ids, i => Assert.Equal(77, i.Length));
        Assert.All(weights, w => Assert.Equal(77, w.Length));
        Assert.Equal([49406, 320, 2368, 49407, 49407], ids[0][..5]); // a cat: start, "a", "cat", end, padding
        Assert.Equal([1f, 1f, 1.5f, 1f, 1f], weights[0][..5]);
        Assert.Equal([49406, 1929, 49407], ids[1][..3]);
        Assert.Equal((float)(1 / 1.1), weights[1][1]);
    }

    [Fact]
    public void Without_a_tokenizer_the_built_in_vocabulary_is_used()
    {
        var (code, stdout, stderr) = Sd("tokenize", "a photo of a cat");
        Assert.Equal((0, "[49406,320,1125,539,320,2368,49407]" + Environment.NewLine, ""), (code, stdout, stderr));
    }

    [Fact]
    public void Missing_folders_are_one_line_errors()
    {
        var dir = Temp();
        try
        {
            var missing = Path.Combine(dir, "nope");
            var half = Path.Combine(dir, "half");
            Directory.CreateDirectory(half);
            File.WriteAllText(Path.Combine(half, "vocab.json"), "{}");
            var cases = new (string[] Args, int Code, string Message)[]
            {
                (["tokenize", "--tokenizer", missing, "a cat"], 1, $"{missing}: tokenizer folder not found"),
                (["tokenize", "--tokenizer", half, "a cat"], 1, $"{half}: tokenizer folder has no merges.txt"),
                (["tokenize", "--model", dir, "a cat"], 1, $"{dir}: the model folder has no tokenizer/ folder"),
                (["tokenize", "--model", missing, "a cat"], 1, $"{missing}: no such model folder"),
                (["tokenize", "--tokenizer", dir, "--model", dir, "a cat"], 2, "not both"),
                (["tokenize", "--tokenizer", dir], 2, "needs a text"),
                (["tokenize", "--tokenizer", dir, "a", "cat"], 2, "takes one text (quote it)"),
                (["tokenize", "--tokenizer"], 2, "option --tokenizer needs a value"),
                (["tokenize", "--bogus", "a cat"], 2, "unexpected option '--bogus'"),
            };
            foreach (var (args, want, message) in cases)
            {
                var (code, stdout, stderr) = Sd(args);
                Assert.True(want == code, $"{string.Join(' ', args)}: exit {code}, {stderr}");
                Assert.Equal("", stdout);
                Assert.StartsWith("sd: error: ", stderr);
                Assert.Contains(message, stderr);
                Assert.Single(stderr.TrimEnd().Split('\n'));
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Help_lists_tokenize()
    {
        Assert.Contains("tokenize [--tokenizer DIR | --model DIR]", Sd("--help").Out);
    }
}
