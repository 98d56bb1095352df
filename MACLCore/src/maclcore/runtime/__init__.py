"""The ground floor of services every stage uses: the device and its precision (``device``), the processes of a
run (``processes``), run control: output locks and stop requests (``control``), and progress reporting
(``progress``). It imports nothing above errors and config."""
