"""A target source wrapper for tests that must prove which batch got which answer."""


class Recording:
    """Wraps a real target source; keeps every batch it was asked for and every answer it returned."""

    def __init__(self, source):
        self.source, self.asked, self.answers = source, [], []

    @property
    def stats(self):
        return self.source.stats

    @property
    def version(self):
        return self.source.version

    def stream(self, batches):
        def remember():
            for images in batches:
                self.asked.append(images)
                yield images
        for answer in self.source.stream(remember()):
            self.answers.append(answer)
            yield answer
