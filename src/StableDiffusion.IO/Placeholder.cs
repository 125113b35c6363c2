namespace StableDiffusion.IO;

internal static class Placeholder
{
}
