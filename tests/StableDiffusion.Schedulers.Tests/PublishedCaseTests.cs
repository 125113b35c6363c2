using System.Text.Json;
using System.Text.Json.Nodes;
using Xunit.Abstractions;

namespace StableDiffusion.Schedulers.Tests;

/// <summary>
/// Every case of ../shared/reference/scheduler-cases.json: the published end-to-end numbers of diffusers' scheduler
/// tests (sum and mean of |x| after a full loop over the dummy model), run through the same harness.
/// </summary>
public class PublishedCaseTests(ITestOutputHelper output)
{
    /// <summary>The case names of the reference file; a test below checks that this list covers the whole file.</summary>
    private static readonly string[] Names =
    [
        "ddim", "ddim v_prediction", "ddim set_alpha_to_one, beta_start 0.01", "ddim no set_alpha_to_one, beta_start 0.01",
        "pndm", "pndm v_prediction",
        "euler", "euler karras",
        "lms", "lms karras",
        "heun",
        "dpmpp_2m", "dpmpp_2m v_prediction", "dpmpp_2m karras v_prediction",
        "unipc", "unipc karras", "unipc v_prediction",
        "lcm one step at t=999",
    ];

    public static TheoryData<string> CaseNames => new(Names);

    private static JsonElement Cases => Reference.Json("scheduler-cases.json");

    [SkippableFact]
    public void The_case_list_covers_the_reference_file()
    {
        var inFile = Cases.GetProperty("cases").EnumerateArray().Select(c => c.GetProperty("name").GetString()!).ToList();
        var listed = Names.ToList();
        Assert.Equal(inFile.Order(), listed.Order());
    }

    [SkippableTheory]
    [MemberData(nameof(CaseNames))]
    public void Matches_the_published_sum_and_mean(string name)
    {
        var file = Cases;
        var c = file.GetProperty("cases").EnumerateArray().Single(e => e.GetProperty("name").GetString() == name);
        string family = name.Split(' ')[0];
        // The case's config over the family's base config, read by the same parser as a scheduler_config.json.
        var json = JsonNode.Parse(file.GetProperty("base_configs").GetProperty(family).GetRawText())!.AsObject();
        foreach (var (k, v) in JsonNode.Parse(c.GetProperty("config").GetRawText())!.AsObject()) json[k] = v?.DeepClone();
        var config = SchedulerConfig.Parse(json.ToJsonString(), $"{name} config");
        var s = Samplers.Create(family, config);

        float[] x;
        if (family == "lcm")
        {
            // diffusers' test_full_loop_onestep: set_timesteps(1) gives the single timestep 999 and the step returns
            // the denoised sample. (The case text says num_inference_steps 10, but a first step of a 10-step LCM
            // schedule adds fresh noise; only the one-step schedule is deterministic.)
            s.SetTimesteps(1);
            Assert.Equal([999.0], s.Timesteps);
            x = Harness.TimestepLoop(s, Harness.Sample());
        }
        else
        {
            s.SetTimesteps(10);
            x = family is "euler" or "lms" or "heun" ? Harness.SigmaLoop(s, Harness.Sample()) : Harness.TimestepLoop(s, Harness.Sample());
        }

        var (sum, mean) = Harness.AbsSumMean(x);
        var tol = file.GetProperty("harness").GetProperty("tolerance");
        double tolSum = c.TryGetProperty("tolerance_sum", out var ts) ? ts.GetDouble() : 1e-2;
        double tolMean = 1e-3;
        bool hasSum = c.TryGetProperty("expected_sum", out var es);
        double expectedMean = c.GetProperty("expected_mean").GetDouble();
        output.WriteLine($"{name}: sum {sum:F6}{(hasSum ? $" (expected {es.GetDouble()}, ±{tolSum})" : "")}, mean {mean:F6} (expected {expectedMean}, ±{tolMean}); {tol}");
        if (hasSum) Assert.True(Math.Abs(sum - es.GetDouble()) < tolSum, $"{name}: sum {sum} vs {es.GetDouble()}");
        Assert.True(Math.Abs(mean - expectedMean) < tolMean, $"{name}: mean {mean} vs {expectedMean}");
    }
}
