namespace StableDiffusion.Schedulers.Tests;

/// <summary>Every sampler, spacing, schedule and a range of step counts: schedules are ordered and sampling stays finite.</summary>
public class SmokeTests
{
    public static TheoryData<string, string, string> Cases()
    {
        var d = new TheoryData<string, string, string>();
        foreach (var name in Samplers.Names)
        foreach (var spacing in new[] { "leading", "linspace", "trailing" })
        foreach (var schedule in new[] { "default", "karras", "exponential" })
        {
            if (name is "ddim" or "pndm" or "lcm" && schedule != "default") continue;
            if (name == "lcm" && spacing != "leading") continue;
            d.Add(name, spacing, schedule);
        }
        return d;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Schedules_are_ordered_and_sampling_stays_finite(string name, string spacing, string schedule)
    {
        foreach (int steps in new[] { 1, 2, 3, 7, 25, 50 })
        {
            var s = Samplers.Create(name, SchedulerConfig.StableDiffusion15,
                schedule == "default" ? null : Samplers.ParseSchedule(schedule), name == "lcm" ? null : Samplers.ParseSpacing(spacing));
            s.SetTimesteps(steps);
            Assert.True(s.Timesteps.Count >= steps, $"{name} {steps}: {s.Timesteps.Count} iterations");
            for (int i = 0; i < s.Timesteps.Count; i++)
            {
                Assert.InRange(s.Timesteps[i], 0, 999);
                if (i > 0) Assert.True(s.Timesteps[i] <= s.Timesteps[i - 1], $"{name} {steps}: timesteps rise at {i}");
            }
            if (s.Sigmas.Count > 0)
            {
                Assert.True(s.Sigmas.Count == s.Timesteps.Count + 1, $"{name} {steps}: {s.Sigmas.Count} sigmas for {s.Timesteps.Count} iterations");
                for (int i = 1; i < s.Sigmas.Count; i++) Assert.True(s.Sigmas[i] <= s.Sigmas[i - 1], $"{name} {steps}: sigmas rise at {i}");
            }
            var x = Oracle.Gaussian(32, 1).Select(v => v * (float)s.InitNoiseSigma).ToArray();
            int draws = 0;
            for (int i = 0; i < s.Timesteps.Count; i++)
                x = s.Step(Harness.Model(s.ScaleModelInput(x, i), s.Timesteps[i]), i, x, () => Oracle.Gaussian(32, (uint)++draws));
            Assert.All(x, v => Assert.True(float.IsFinite(v), $"{name} {spacing} {schedule} {steps} steps: {v}"));
        }
    }
}
