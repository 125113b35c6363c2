namespace StableDiffusion.TestSupport;

/// <summary>A temporary folder removed with everything in it.</summary>
public sealed class TempFolder : IDisposable
{
    public TempFolder(string prefix = "sd-tests")
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), prefix + "-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
