using System.Runtime.InteropServices;

namespace StableDiffusion.Runtime;

/// <summary>
/// Gives host memory back to the operating system when the process is done with it, so a model released between
/// stages stops counting in the resident set: glibc keeps freed blocks below its (adaptive) mmap threshold in its
/// heap, and pages of a mapped weight file stay resident after they were read. Both calls are hints; elsewhere
/// than glibc on Linux they do nothing.
/// </summary>
public static unsafe partial class HostMemory
{
    private const int MadvDontNeed = 4;
    private static bool trimMissing, adviseMissing;

    /// <summary>Returns the C heap's free pages to the system (glibc's malloc_trim).</summary>
    public static void Trim()
    {
        if (!OperatingSystem.IsLinux() || trimMissing) return;
        try
        {
            MallocTrim(0);
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            trimMissing = true; // musl and others have no malloc_trim
        }
    }

    /// <summary>
    /// Drops the pages of [address, address+length) of a read-only file mapping from the resident set; a later read
    /// faults them in again from the page cache. Only whole pages inside the range are dropped.
    /// </summary>
    public static void DropMappedPages(void* address, long length)
    {
        if (!OperatingSystem.IsLinux() || adviseMissing || length <= 0) return;
        long page = Environment.SystemPageSize;
        long start = ((long)address + page - 1) & ~(page - 1), end = ((long)address + length) & ~(page - 1);
        if (end <= start) return;
        try
        {
            Madvise((void*)start, (nuint)(end - start), MadvDontNeed);
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            adviseMissing = true;
        }
    }

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int Madvise(void* address, nuint length, int advice);
}
