global using Xunit;

// One server (one worker) is shared by the tests of a collection; the tests inside it take turns.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
