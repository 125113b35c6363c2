using OpenQA.Selenium;
using OpenQA.Selenium.Chrome;
using OpenQA.Selenium.Support.UI;
using Xunit.Abstractions;

namespace StableDiffusion.Server.Tests;

/// <summary>
/// The page in a real browser: Debian's headless chromium driven by its chromedriver through Selenium, against
/// <c>sd serve</c> on Kestrel (a real socket). Types a prompt, presses Generate, watches the progress bar move and
/// the image arrive in the gallery. Where chromium is absent the test skips, except under CI (CI=true), where it fails.
/// </summary>
[Collection(ServerCollection.Name)]
public sealed class BrowserTests(ServerFixture server, ITestOutputHelper output)
{
    private const string Chromium = "/usr/bin/chromium", ChromeDriver = "/usr/bin/chromedriver";

    [SkippableFact]
    public async Task The_page_generates_with_live_progress_and_shows_the_image_in_the_gallery()
    {
        bool present = File.Exists(Chromium) && File.Exists(ChromeDriver);
        if (!present && Environment.GetEnvironmentVariable("CI") == "true")
            Assert.Fail($"{Chromium} and {ChromeDriver} are needed (apt-get install chromium chromium-driver)");
        Skip.IfNot(present, "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)");
        server.RequireModels();

        var log = new StringWriter();
        var app = ServerApp.Create(server.Options() with { Listen = "127.0.0.1:0" }, TextWriter.Synchronized(log));
        await app.StartAsync();
        try
        {
            var url = ServerApp.Addresses(app).Single();
            var service = ChromeDriverService.CreateDefaultService(Path.GetDirectoryName(ChromeDriver)!, Path.GetFileName(ChromeDriver));
            service.HideCommandPromptWindow = true;
            var options = new ChromeOptions { BinaryLocation = Chromium };
            options.AddArguments("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,900");
            using var driver = new ChromeDriver(service, options, TimeSpan.FromSeconds(60));
            driver.Navigate().GoToUrl(url + "/");
            var wait = new WebDriverWait(driver, TimeSpan.FromSeconds(30));
            wait.Until(d => d.FindElement(By.Id("status")).Text == "ready");
            Assert.Contains("Euler a", driver.FindElement(By.Id("sampler")).Text);
            Assert.Contains("tiny-b", driver.FindElement(By.Id("model")).Text);

            // Every value the progress bar takes is recorded as it changes.
            ((IJavaScriptExecutor)driver).ExecuteScript("""
                window.seen = [];
                new MutationObserver(() => window.seen.push(+document.getElementById('progress').value))
                  .observe(document.getElementById('progress'), { attributes: true });
                """);
            SetValue(driver, "width", "64");
            SetValue(driver, "height", "48");
            SetValue(driver, "steps", "30");
            SetValue(driver, "seed", "5");
            driver.FindElement(By.Id("prompt")).SendKeys("a watercolour lighthouse");
            driver.FindElement(By.Id("generate")).Click();

            var image = wait.Until(d => d.FindElements(By.CssSelector("#gallery figure.result img")).FirstOrDefault(i => i.GetAttribute("src")?.StartsWith("blob:") == true));
            Assert.NotNull(image);
            var size = ((IJavaScriptExecutor)driver).ExecuteScript("const i = document.querySelector('#gallery img'); return i.naturalWidth + 'x' + i.naturalHeight;");
            Assert.Equal("64x48", size);
            Assert.Contains("a watercolour lighthouse\nSteps: 30, Sampler: Euler a", driver.FindElement(By.CssSelector("#gallery figcaption")).GetAttribute("textContent"));
            Assert.Equal("download PNG", driver.FindElement(By.CssSelector("#gallery figure a")).Text);
            var seen = ((IReadOnlyCollection<object>)((IJavaScriptExecutor)driver).ExecuteScript("return window.seen;")!).Select(Convert.ToDouble).ToList();
            output.WriteLine($"progress values: {string.Join(" ", seen)}");
            Assert.Contains(seen, v => v > 0 && v < 30);
            Assert.Equal(30, seen.Max());
            Assert.Equal("", driver.FindElement(By.Id("error")).Text);
            Assert.False(driver.FindElement(By.Id("preview")).GetAttribute("hidden") is "true");
        }
        finally
        {
            output.WriteLine(log.ToString());
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }

    private static void SetValue(IWebDriver driver, string id, string value)
    {
        var e = driver.FindElement(By.Id(id));
        e.Clear();
        e.SendKeys(value);
    }
}
